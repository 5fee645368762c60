"""The drift parts of one gateway process, built in one place for the app factory.

- `tap`: given to the data plane (the request path's only drift code);
- the sender task: extracts features off the request path and feeds the worker;
- the worker manager, unless another process owns the worker (the supervisor of
  `--workers N`, an operator who runs `switchyard drift-worker` separately, or the
  fleet's worker at `--drift-worker-address udp://HOST:PORT`);
- the worker's status behind the drift metrics and the admin API: the status file of
  the local drift folder, or the worker's HTTP API (`--drift-status-url`).

Nothing here imports Evidently or pandas: with no drift block in any policy, the tap's
per-request cost is one dict lookup and the rest idles.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from gateway.controlplane.policy.loader import LoadedPolicy
from gateway.dataplane.feedback.fleet import FeedbackConfigError, fleet_secret
from gateway.dataplane.snapshot import SnapshotRef
from gateway.drift.channel import AddressError, ChannelKey, target
from gateway.drift.manager import DriftWorkerManager, runs_local_worker
from gateway.drift.remote import HttpWorker, parse_status_url
from gateway.drift.sender import DriftSender
from gateway.drift.status import StatusReader
from gateway.drift.tap import DriftTap
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings


def drift_settings_problem(settings: Settings) -> str | None:
    """Why the drift settings cannot work (a bad worker address or status URL), or None."""
    try:
        target(settings.drift_worker_address, settings.drift_dir)
        if settings.drift_status_url:
            parse_status_url(settings.drift_status_url)
    except AddressError as exc:
        return str(exc)
    return None


def channel_key(settings: Settings) -> ChannelKey | None:
    """The key that tags this process's datagrams: from the configured fleet secret (the
    supervisor of `--workers N` sets one for its workers and its drift worker), else
    None: unsigned, as a drift worker without the secret takes them."""
    try:
        secret, _ = fleet_secret(settings)
    except FeedbackConfigError:
        return None  # the gateway refuses to start with it (FeedbackFleet.open)
    return ChannelKey(secret) if secret is not None else None


class DriftFeed:
    """Tap, sender and (optionally) worker manager of one gateway process."""

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        policies: Callable[[], Sequence[LoadedPolicy]],
    ) -> None:
        self.settings = settings
        self.policies = policies
        counters = metrics.drift
        self.tap = DriftTap(
            settings.drift_buffer, rng=random.Random(settings.seed), dropped=counters.buffer_full
        )
        address = target(settings.drift_worker_address, settings.drift_dir)
        self.sender = DriftSender(self.tap, address, counters, key=channel_key(settings))
        self._status = StatusReader(settings.drift_dir)
        self.remote: HttpWorker | None = None
        if settings.drift_status_url:
            # The worker is elsewhere: the admin API asks it; /metrics leaves its
            # families to the worker's own scrape (see drift_metrics).
            self.remote = HttpWorker(
                settings.drift_status_url, lambda: self.sender.routes, token=settings.admin_token
            )
            counters.remote = self.remote
        else:
            counters.status = self.status
        wanted = runs_local_worker(settings)
        self.manager = DriftWorkerManager(settings, self.wanted) if wanted else None
        self._tasks: list[asyncio.Task[None]] = []

    def status(self) -> dict[str, Any] | None:
        """The worker's status, limited to the routes this process samples: a drift
        folder shared with other gateways (or left from an earlier run) must not show
        their routes here. None while no route has drift."""
        routes = self.sender.routes
        found = self._status()
        if not routes or found is None:
            return None
        kept = {r: e for r, e in (found.get("routes") or {}).items() if r in routes}
        # The worker's drops are not limited like this: they include rows of routes this
        # process no longer samples (sent before a reload removed the drift block), and a
        # loss is better shown too often than hidden.
        return {**found, "routes": kept}

    def wanted(self) -> bool:
        """Whether any serving policy has a drift block (then the worker should run)."""
        return any(p.policy.drift is not None for p in self.policies())

    def start(self, ref: SnapshotRef) -> None:
        """Start the sender (and the manager) on the running loop."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.sender.run(ref, self.policies)))
        if self.manager is not None:
            self._tasks.append(loop.create_task(self.manager.run()))

    async def stop(self) -> None:
        """Stop the tasks and the worker process (called after the data plane drained)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.manager is not None:
            await self.manager.stop()
        if self.remote is not None:
            await self.remote.aclose()
