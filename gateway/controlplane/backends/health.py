"""Active health checks: probe every endpoint of the serving snapshot, off the request path.

Each variant with a `HealthCheck` (compiled from the policy's `health_check`, or the
protocol's default: model ready for KServe v2, `/readyz` for JSON services) has its
endpoints probed with `GET path` every `interval`. After `unhealthy_after` failures in a
row (no answer within `timeout`, or a status other than 2xx) the endpoint leaves
rotation through the same `EndpointState` that passive outlier ejection uses, so the
picker, fallbacks and the `switchyard_backend_ejected` gauge treat both alike; after
`healthy_after` passes in a row it comes back. Endpoints start in rotation: a gateway
that just started does not wait for a probe to serve.

Probes are keyed by (backend, URL): several routes sharing a backend with different
probes each keep their own streak, and the endpoint is out while any of them fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.controlplane.backends.load import new_client
from gateway.dataplane.health import EndpointState
from gateway.dataplane.snapshot import HealthCheck, SnapshotRef
from gateway.importing import import_off_loop
from gateway.observability.metrics import GatewayMetrics

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("switchyard.healthcheck")

MAX_SLEEP = 1.0  # seconds: how late a policy reload's new probes may start
MIN_SLEEP = 0.02


@dataclass(eq=False, slots=True)
class Probe:
    """One probed URL of one endpoint, and its streak."""

    backend: str
    url: str
    check: HealthCheck
    state: EndpointState
    failures: int = 0
    successes: int = 0
    down: bool = False  # this probe holds the endpoint out of rotation
    next_at: float = 0.0
    running: bool = False


class HealthChecker:
    """Probes the endpoints of `ref.current` for as long as `run` runs."""

    def __init__(
        self,
        ref: SnapshotRef,
        metrics: GatewayMetrics,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref = ref
        self.metrics = metrics
        self.clock = clock
        # Made by the first read (`_http`): httpx (~10 MB of RSS with what it imports) is
        # loaded only once a policy opts in, not by every gateway that runs this loop.
        self._client = client
        self.probes: dict[tuple[str, str], Probe] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # Redirects are not followed: a probe path answering 3xx is misconfigured.
            self._client = new_client()
        return self._client

    def wanted(self) -> dict[tuple[str, str], tuple[HealthCheck, EndpointState]]:
        """(backend, URL) -> (check, endpoint state) for every probed endpoint now."""
        out: dict[tuple[str, str], tuple[HealthCheck, EndpointState]] = {}
        for route in self.ref.current.routes.values():
            for variant in route.variants:
                check = variant.health_check
                if check is None:
                    continue
                for endpoint in variant.endpoints:
                    url = f"http://{endpoint.backend}{endpoint.base_path}{check.path}"
                    out.setdefault((endpoint.backend, url), (check, endpoint.state))
        return out

    def sync(self, now: float) -> None:
        """Follow the serving snapshot: start new probes, drop those no policy asks for."""
        wanted = self.wanted()
        for key in [k for k in self.probes if k not in wanted]:
            gone = self.probes.pop(key)
            if gone.down:  # nothing probes it any more: release our hold on it
                gone.state.probe_changed(True, now)
        for key, (check, state) in wanted.items():
            probe = self.probes.get(key)
            if probe is None:
                self.probes[key] = Probe(key[0], key[1], check, state, next_at=now)
            elif probe.check != check:
                probe.check = check
                probe.next_at = min(probe.next_at, now + check.interval)

    def record(self, probe: Probe, ok: bool, now: float, why: str = "") -> None:
        """Count one probe result and move the endpoint in or out of rotation."""
        if self.probes.get((probe.backend, probe.url)) is not probe:
            return  # a reload dropped this probe while it ran: it holds nothing any more
        outcome = "ok" if ok else "failed"
        key = (probe.backend, outcome)
        self.metrics.health_probes[key] = self.metrics.health_probes.get(key, 0) + 1
        check = probe.check
        if ok:
            probe.failures = 0
            probe.successes += 1
            if probe.down and probe.successes >= check.healthy_after:
                probe.down = False
                probe.state.probe_changed(True, now)
                log.info("%s passed %d probes: back in rotation", probe.url, probe.successes)
            return
        probe.successes = 0
        probe.failures += 1
        if not probe.down and probe.failures >= check.unhealthy_after:
            probe.down = True
            probe.state.probe_changed(False, now)
            log.warning(
                "%s failed %d probes in a row (%s): out of rotation",
                probe.url,
                probe.failures,
                why,
            )

    async def probe_once(self, probe: Probe) -> None:
        """GET the probe's URL and record the result."""
        await import_off_loop("httpx")  # the first time: in a thread
        import httpx  # what _http loads anyway; named here for the except clause

        why = ""
        try:
            response = await self._http().get(probe.url, timeout=probe.check.timeout)
            ok = response.is_success
            if not ok:
                why = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            ok = False
            why = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        self.record(probe, ok, self.clock(), why)

    def _launch(self, probe: Probe, now: float) -> None:
        probe.running = True
        probe.next_at = now + probe.check.interval
        task = asyncio.get_running_loop().create_task(self._run_probe(probe))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_probe(self, probe: Probe) -> None:
        try:
            await self.probe_once(probe)
        finally:
            probe.running = False

    def step(self, now: float) -> float:
        """Start the probes that are due; returns seconds until the next is."""
        self.sync(now)
        soonest = now + MAX_SLEEP
        for probe in self.probes.values():
            if probe.next_at <= now and not probe.running:
                self._launch(probe, now)
            soonest = min(soonest, probe.next_at)
        return max(MIN_SLEEP, soonest - now)

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.step(self.clock()))
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._client is not None:
                await self._client.aclose()
