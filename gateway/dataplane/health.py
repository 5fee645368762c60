"""Live state of backends and routes that outlives any one snapshot.

Passive outlier ejection follows Envoy's consecutive-errors detector: after N failures
in a row an endpoint leaves rotation for `base * times_ejected` (capped), then comes
back on its own; one success resets the streak. Retry budgets follow Envoy's/Linkerd's
idea: retries may add only a fixed share of a route's traffic, so a failing backend is
not hit with a retry storm.

Active health checks (controlplane/backends/health.py) feed the same state: while any probe
of an endpoint fails, it is out of rotation with no end time (`PROBE_EJECTED`), and it
comes back when its probes pass again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.dataplane.flow import FlowQueues
from gateway.dataplane.picker_state import PickerPools
from gateway.observability.metrics import EndpointGauges, GatewayMetrics

PROBE_EJECTED = float("inf")  # `ejected_until` of an endpoint its probes took out


class EndpointState:
    """Mutable health and load of one backend endpoint (shared by every snapshot)."""

    __slots__ = (
        "backend",
        "backlog",
        "consecutive_failures",
        "ejected_until",
        "ejections",
        "in_flight",
        "kv_usage",
        "load_at",
        "lora_free",
        "lora_running",
        "lora_waiting",
        "max_loras",
        "probes_down",
        "queued",
        "running",
    )

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.in_flight = 0
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0
        # What the backend itself reports (vLLM /metrics, scraped by the control plane):
        # requests queued and running on it from every client, and KV-cache use (0..1).
        self.queued = 0
        self.running = 0
        self.kv_usage = 0.0
        self.load_at = 0.0  # when that report was read; 0 = never
        # LoRA adapters the backend reports in its batch and queued for it (vLLM with
        # --enable-lora), how many one batch holds (0: no report), and whether one more
        # adapter fits without swapping another out (true when nothing is reported:
        # unknown is not full). The picker's lora scorer reads them.
        self.lora_running: tuple[str, ...] = ()
        self.lora_waiting: tuple[str, ...] = ()
        self.max_loras = 0
        self.lora_free = True
        # queued + running: everything the backend has on its hands, this gateway's
        # requests included (so pick() takes max(in_flight, backlog), not the sum).
        self.backlog = 0
        # Active probes of this endpoint now failing (several routes may probe it).
        self.probes_down = 0

    def available(self, now: float) -> bool:
        return self.ejected_until <= now

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def record_failure(
        self, now: float, threshold: int, base: float, cap: float, may_eject: bool
    ) -> bool:
        """Count a failure; return True when this failure ejected the endpoint."""
        self.consecutive_failures += 1
        if self.consecutive_failures < threshold or self.ejected_until > now or not may_eject:
            return False
        self.ejections += 1
        self.ejected_until = now + min(base * self.ejections, cap)
        self.consecutive_failures = 0
        return True

    def probe_changed(self, healthy: bool, now: float) -> None:
        """One active probe of this endpoint turned unhealthy (or healthy again)."""
        if not healthy:
            self.probes_down += 1
            if self.probes_down == 1:
                if self.ejected_until <= now:
                    self.ejections += 1
                self.ejected_until = PROBE_EJECTED
            return
        self.probes_down = max(0, self.probes_down - 1)
        if self.probes_down == 0 and self.ejected_until == PROBE_EJECTED:
            # Back in rotation with a clean slate; a later passive ejection starts over.
            self.ejected_until = 0.0
            self.consecutive_failures = 0


class RetryBudget:
    """Allows retries up to `ratio` of requests over a sliding ~10 s window."""

    __slots__ = (
        "_bucket",
        "_bucket_end",
        "_prev_requests",
        "_prev_retries",
        "_requests",
        "_retries",
    )

    WINDOW = 10.0

    def __init__(self) -> None:
        self._bucket = 0
        self._bucket_end = 0.0
        self._requests = 0
        self._retries = 0
        self._prev_requests = 0
        self._prev_retries = 0

    def _roll(self, now: float) -> None:
        bucket = int(now // self.WINDOW)
        if bucket != self._bucket:
            if bucket == self._bucket + 1:
                self._prev_requests, self._prev_retries = self._requests, self._retries
            else:
                self._prev_requests = self._prev_retries = 0
            self._requests = self._retries = 0
            self._bucket = bucket
            self._bucket_end = (bucket + 1) * self.WINDOW

    def record_request(self, now: float) -> None:
        # Per request: one comparison; the window rolls only every WINDOW seconds.
        if now >= self._bucket_end:
            self._roll(now)
        self._requests += 1

    def try_retry(self, now: float, ratio: float, min_per_second: float) -> bool:
        self._roll(now)
        requests = self._requests + self._prev_requests
        retries = self._retries + self._prev_retries
        if retries < ratio * requests + min_per_second * self.WINDOW:
            self._retries += 1
            return True
        return False


class HealthRegistry:
    """Get-or-create store of endpoint states, route budgets and pool queues, by name."""

    def __init__(self, metrics: GatewayMetrics, clock: Callable[[], float] = time.monotonic):
        self._metrics = metrics
        self._clock = clock
        self._endpoints: dict[str, EndpointState] = {}
        self._budgets: dict[str, RetryBudget] = {}
        # The queues of flow-controlled pools (routes with a `flow` block).
        self.flows = FlowQueues(metrics.flow)
        # What the scored pickers learnt per pool (prefix table, sessions, context sizes).
        self.pickers = PickerPools()

    def endpoint(self, backend: str) -> EndpointState:
        state = self._endpoints.get(backend)
        if state is None:
            state = self._endpoints[backend] = EndpointState(backend)
            s = state
            clock = self._clock
            self._metrics.track_endpoint(
                EndpointGauges(
                    backend=backend,
                    in_flight=lambda: s.in_flight,
                    ejected=lambda: not s.available(clock()),
                    ejections=lambda: s.ejections,
                    queued=lambda: s.queued,
                    running=lambda: s.running,
                    kv_usage=lambda: s.kv_usage,
                    probe_down=lambda: s.probes_down > 0,
                )
            )
        return state

    def budget(self, route: str) -> RetryBudget:
        budget = self._budgets.get(route)
        if budget is None:
            budget = self._budgets[route] = RetryBudget()
        return budget

    def endpoints(self) -> dict[str, EndpointState]:
        return dict(self._endpoints)
