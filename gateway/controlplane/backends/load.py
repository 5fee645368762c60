"""Backend load from the backends themselves: vLLM's `/metrics`, scraped off the request path.

For variants with `load_metrics: vllm` the control plane reads each endpoint's queue
(`vllm:num_requests_waiting`), running requests and KV-cache use every interval and
stores them on the endpoint's live state, where the data plane's endpoint picker reads
them (see dataplane/pick.py). No request ever waits for a scrape. A report older than
three rounds (interval + timeout each) counts as unknown (queue 0), so a backend that
stops answering its metrics is picked on the gateway's own in-flight count alone.

A vLLM started with `--enable-lora` also reports which LoRA adapters its batch holds:
`vllm:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters}`, a
gauge set to the time of each update, one series per combination it has ever seen (old
ones are never removed), so the newest series (largest value) is the current state.
`parse_vllm_metrics` reads it into `BackendLoad.lora_running`, `lora_waiting` and
`max_loras` (vLLM's `--max-loras`: adapters one batch can hold), the facts an
adapter-affinity picker needs: an endpoint already running an adapter serves its next
request without swapping one in. The watcher stores them on the endpoint's live state
(`set_lora`), where the picker's `lora` scorer reads them (dataplane/scorers.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.dataplane.health import EndpointState
from gateway.dataplane.snapshot import SnapshotRef
from gateway.importing import import_off_loop

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("switchyard.loadwatch")

WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
# vLLM renamed the KV-cache gauge (gpu_ -> kv_) in v0.10; read either.
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
LORA_INFO = "vllm:lora_requests_info"
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class BackendLoad:
    waiting: int
    running: int
    kv_usage: float
    # LoRA adapters in the batch now and queued for it (vLLM with --enable-lora; empty
    # otherwise), and how many adapters one batch can hold (0: LoRA not enabled).
    lora_running: tuple[str, ...] = ()
    lora_waiting: tuple[str, ...] = ()
    max_loras: int = 0


def parse_vllm_metrics(text: str) -> BackendLoad:
    """Sum vLLM's gauges over their label sets (one per served model); the LoRA adapters
    from the newest `vllm:lora_requests_info` series."""
    waiting = running = 0.0
    kv = 0.0
    lora_at = float("-inf")
    lora_labels: dict[str, str] | None = None
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = (line.partition("{")[0] if "{" in line else line.partition(" ")[0]).strip()
        if (
            name not in WAITING
            and name not in RUNNING
            and name not in KV_USAGE
            and name != LORA_INFO
        ):
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if name in WAITING:
            waiting += value
        elif name in RUNNING:
            running += value
        elif name == LORA_INFO:
            if value > lora_at:  # the value is the series' last update time
                lora_at, lora_labels = value, _labels(line)
        else:
            kv = max(kv, value)
    if lora_labels is None:
        return BackendLoad(int(waiting), int(running), kv)
    try:
        max_loras = int(lora_labels.get("max_lora", "0"))
    except ValueError:
        max_loras = 0
    return BackendLoad(
        int(waiting),
        int(running),
        kv,
        _adapters(lora_labels.get("running_lora_adapters", "")),
        _adapters(lora_labels.get("waiting_lora_adapters", "")),
        max_loras,
    )


def _labels(line: str) -> dict[str, str]:
    """The labels of one exposition line (`name{a="x",b="y"} value`), unescaped."""
    head = line.rpartition("}")[0] if "}" in line else ""
    return {k: _UNESCAPE.sub(_unescape, v) for k, v in _LABEL.findall(head)}


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    return "\n" if char == "n" else char


def _adapters(joined: str) -> tuple[str, ...]:
    """vLLM joins adapter names with commas (no escaping); sorted, without repeats."""
    return tuple(sorted({name.strip() for name in joined.split(",") if name.strip()}))


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
        # Made by the first read (`_http`): httpx (~10 MB of RSS with what it imports) is
        # loaded only once a policy opts in, not by every gateway that runs this loop.
        self._client = client
        self.failures: dict[str, int] = {}
        # A report outlives three rounds, each of which may wait `timeout` for a reply.
        self.stale_after = 3 * (interval + timeout)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = new_client(timeout=self.timeout)
        return self._client

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
        await import_off_loop("httpx")  # the first time: in a thread
        import httpx  # what _http loads anyway; named here for isinstance

        pairs = list(targets)
        client = self._http()
        results = await asyncio.gather(
            *(client.get(url) for url, _ in pairs), return_exceptions=True
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
                set_lora(state, load.lora_running, load.lora_waiting, load.max_loras)
                state.load_at = now
                self.failures.pop(state.backend, None)
                continue
            count = self.failures[state.backend] = self.failures.get(state.backend, 0) + 1
            if count == 1:
                log.warning("cannot read backend load from %s: %s", url, describe_failure(result))
            # Keep the last report while it is recent: one slow scrape of a saturated
            # backend must not read as "idle" exactly when its queue matters.
            if now - state.load_at > self.stale_after:
                state.queued = state.running = state.backlog = 0  # unknown is not busy
                state.kv_usage = 0.0
                set_lora(state, (), (), 0)

    async def run(self) -> None:
        try:
            while True:
                targets = self.targets()
                if targets:
                    await self.scrape_once(targets.values())
                await asyncio.sleep(self.interval)
        finally:
            if self._client is not None:
                await self._client.aclose()


def set_lora(
    state: EndpointState, running: tuple[str, ...], waiting: tuple[str, ...], max_loras: int
) -> None:
    """Store an endpoint's LoRA report where the lora scorer reads it, with whether one
    more adapter fits in its batch without swapping one out: fewer distinct adapters
    running or waiting than --max-loras (waiting ones take a freed slot first). No report
    (max_loras 0) counts as free: unknown is not full."""
    state.lora_running = running
    state.lora_waiting = waiting
    state.max_loras = max_loras
    state.lora_free = max_loras == 0 or len(set(running) | set(waiting)) < max_loras


def describe_failure(result: object) -> str:
    """Why a read of a backend failed: its HTTP status, or the exception."""
    import httpx  # a lookup: only a client's answers or errors come here

    if isinstance(result, httpx.Response):
        return f"HTTP {result.status_code}"
    return type(result).__name__ + (f": {result}" if str(result) else "")


def new_client(timeout: float | None = None) -> httpx.AsyncClient:
    """An httpx client for reading backends (`timeout` seconds per request, else httpx's
    default; redirects are not followed), importing httpx on the first call: the
    watchers that read backends run in every gateway, but read nothing, and need no
    client, until a policy asks for load metrics, context lengths or health probes."""
    import httpx

    if timeout is None:
        return httpx.AsyncClient(follow_redirects=False)
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False)
