"""Backend load from the backends themselves: vLLM's `/metrics`, scraped off the request path.

For variants with `load_metrics: vllm` the control plane reads each endpoint's queue
(`vllm:num_requests_waiting`), running requests and KV-cache use every interval and
stores them on the endpoint's live state, where the data plane's endpoint picker reads
them (see dataplane/pick.py). No request ever waits for a scrape. A report older than
three rounds (interval + timeout each) counts as unknown (queue 0), so a backend that
stops answering its metrics is picked on the gateway's own in-flight count alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from gateway.dataplane.health import EndpointState
from gateway.dataplane.snapshot import SnapshotRef

log = logging.getLogger("switchyard.loadwatch")

WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
# vLLM renamed the KV-cache gauge (gpu_ -> kv_) in v0.10; read either.
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(frozen=True, slots=True)
class BackendLoad:
    waiting: int
    running: int
    kv_usage: float


def parse_vllm_metrics(text: str) -> BackendLoad:
    """Sum vLLM's gauges over their label sets (one per served model)."""
    waiting = running = 0.0
    kv = 0.0
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = (line.partition("{")[0] if "{" in line else line.partition(" ")[0]).strip()
        if name not in WAITING and name not in RUNNING and name not in KV_USAGE:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if name in WAITING:
            waiting += value
        elif name in RUNNING:
            running += value
        else:
            kv = max(kv, value)
    return BackendLoad(int(waiting), int(running), kv)


class LoadWatcher:
    """Scrapes every `load_metrics: vllm` endpoint of the serving snapshot, forever."""

    def __init__(
        self,
        ref: SnapshotRef,
        interval: float = 1.0,
        # A saturated vLLM answers /metrics slowly (seconds on a busy 2-core test box):
        # a tight timeout would read "no report" exactly when the queue matters.
        timeout: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.ref = ref
        self.interval = interval
        self.timeout = timeout
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self.failures: dict[str, int] = {}
        # A report outlives three rounds, each of which may wait `timeout` for a reply.
        self.stale_after = 3 * (interval + timeout)

    def targets(self) -> dict[str, tuple[str, EndpointState]]:
        """backend -> (metrics URL, live state), for endpoints whose variant opts in."""
        out: dict[str, tuple[str, EndpointState]] = {}
        for route in self.ref.current.routes.values():
            for variant in route.variants:
                if variant.load_metrics != "vllm":
                    continue
                for endpoint in variant.endpoints:
                    url = f"http://{endpoint.backend}{endpoint.base_path}/metrics"
                    out[endpoint.backend] = (url, endpoint.state)
        return out

    async def scrape_once(self, targets: Iterable[tuple[str, EndpointState]]) -> None:
        pairs = list(targets)
        results = await asyncio.gather(
            *(self._client.get(url) for url, _ in pairs), return_exceptions=True
        )
        now = time.monotonic()
        for (url, state), result in zip(pairs, results, strict=True):
            if isinstance(result, httpx.Response) and result.is_success:
                load = parse_vllm_metrics(result.text)
                state.queued, state.running, state.kv_usage = (
                    load.waiting,
                    load.running,
                    load.kv_usage,
                )
                state.backlog = load.waiting + load.running
                state.load_at = now
                self.failures.pop(state.backend, None)
                continue
            count = self.failures[state.backend] = self.failures.get(state.backend, 0) + 1
            if count == 1:
                log.warning("cannot read backend load from %s: %s", url, _describe(result))
            # Keep the last report while it is recent: one slow scrape of a saturated
            # backend must not read as "idle" exactly when its queue matters.
            if now - state.load_at > self.stale_after:
                state.queued = state.running = state.backlog = 0  # unknown is not busy
                state.kv_usage = 0.0

    async def run(self) -> None:
        try:
            while True:
                targets = self.targets()
                if targets:
                    await self.scrape_once(targets.values())
                await asyncio.sleep(self.interval)
        finally:
            await self._client.aclose()


def _describe(result: object) -> str:
    if isinstance(result, httpx.Response):
        return f"HTTP {result.status_code}"
    return type(result).__name__ + (f": {result}" if str(result) else "")
