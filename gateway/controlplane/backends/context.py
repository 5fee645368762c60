"""Context lengths from the backends themselves: vLLM's `/v1/models`, off the request path.

For pools whose `picker` checks context fit without a policy `max_model_len`, the
control plane reads each endpoint's `max_model_len` from its `/v1/models` (new endpoints
at once, then every `interval`: a context length changes only with a restart) and hands
it to the pool's picker (`dataplane.picker_state.PoolState.lengths`), which skips
endpoints too small for a request and refuses one that fits none. An endpoint that
reports no length (not vLLM) is not checked; a failed read keeps the last length.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from gateway.controlplane.backends.load import describe_failure, new_client
from gateway.dataplane.scorers import Picker
from gateway.dataplane.snapshot import RuntimeSnapshot, SnapshotRef
from gateway.importing import import_off_loop

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("switchyard.contextwatch")


def parse_max_model_len(payload: bytes, models: tuple[str, ...] = ()) -> int:
    """The context length a `/v1/models` answer reports: that of the first of `models`
    it lists, else the largest listed; 0 when it reports none."""
    try:
        found = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return 0
    data = found.get("data") if isinstance(found, dict) else None
    if not isinstance(data, list):
        return 0
    lengths: dict[str, int] = {}
    for card in data:
        if not isinstance(card, dict):
            continue
        size = card.get("max_model_len")
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            lengths[str(card.get("id"))] = size
    for model in models:
        if model in lengths:
            return lengths[model]
    return max(lengths.values(), default=0)


@dataclass(slots=True)
class ContextTarget:
    """One endpoint whose context length pickers need: where to read it, who reads it."""

    url: str
    models: tuple[str, ...] = ()  # the model names it is sent; the first listed wins
    readers: list[tuple[Picker, int]] = field(default_factory=list)  # (picker, endpoint)


def context_targets(snapshot: RuntimeSnapshot) -> dict[str, ContextTarget]:
    """backend -> its target, for the endpoints of pools that check context fit and
    have no policy `max_model_len`."""
    out: dict[str, ContextTarget] = {}
    for route in snapshot.routes.values():
        for variant in route.variants:
            picker = variant.picker
            if picker is None or not picker.fit or picker.max_model_len:
                continue
            model = variant.upstream_model or route.name
            for i, endpoint in enumerate(variant.endpoints):
                target = out.get(endpoint.backend)
                if target is None:
                    url = f"http://{endpoint.backend}{endpoint.base_path}/v1/models"
                    target = out[endpoint.backend] = ContextTarget(url)
                if model not in target.models:
                    target.models = (*target.models, model)
                target.readers.append((picker, i))
    return out


class ContextWatcher:
    """Reads the context length of every endpoint a picker checks, forever."""

    def __init__(
        self,
        ref: SnapshotRef,
        interval: float = 30.0,
        timeout: float = 2.0,
        client: httpx.AsyncClient | None = None,
        tick: float = 1.0,
    ) -> None:
        self.ref = ref
        self.interval = interval
        self.tick = tick  # how soon an endpoint new to the snapshot is read
        self.timeout = timeout
        # Made by the first read (`_http`): httpx (~10 MB of RSS with what it imports) is
        # loaded only once a policy opts in, not by every gateway that runs this loop.
        self._client = client
        self._due: dict[str, float] = {}  # backend -> when to read it next

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = new_client(timeout=self.timeout)
        return self._client

    async def read_once(self, targets: dict[str, ContextTarget], now: float) -> int:
        """Read the targets that are due; returns how many were read."""
        due = {b: t for b, t in targets.items() if self._due.get(b, 0.0) <= now}
        if not due:
            return 0
        await import_off_loop("httpx")  # the first time: in a thread
        import httpx  # what _http loads anyway; named here for isinstance

        client = self._http()
        results = await asyncio.gather(
            *(client.get(t.url) for t in due.values()), return_exceptions=True
        )
        for (backend, target), result in zip(due.items(), results, strict=True):
            self._due[backend] = now + self.interval
            if not isinstance(result, httpx.Response) or not result.is_success:
                log.info(
                    "cannot read the context length of %s: %s", target.url, describe_failure(result)
                )
                continue
            size = parse_max_model_len(result.content, target.models)
            for picker, index in target.readers:
                picker.pool.lengths[picker.slots[index]] = size
                if size:
                    picker.reported[backend] = size
                else:
                    picker.reported.pop(backend, None)
        return len(due)

    async def run(self) -> None:
        try:
            while True:
                targets = context_targets(self.ref.current)
                if targets:
                    await self.read_once(targets, time.monotonic())
                await asyncio.sleep(self.tick)
        finally:
            if self._client is not None:
                await self._client.aclose()
