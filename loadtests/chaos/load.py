"""Bounded background load for chaos scenarios and the soak: mixed requests, judged.

A `Load` runs `workers` coroutines that send requests until it is stopped, `limit`
requests were sent, or `seconds` passed, whichever comes first: a scenario can never
spin forever. Every request is judged by what a client would accept as a success (a
stream counts only if it ended with its protocol's finish), so a cut stream is a
failure here even though its status was 200.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx
import orjson

MESSAGES = [{"role": "user", "content": "Summarise the chaos run in one line."}]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's result: ok or not, why not, its status and how long it took."""

    ok: bool
    kind: str
    status: int = 0
    reason: str = ""
    seconds: float = 0.0
    served_by: str = ""  # x-switchyard-backend, when the gateway said
    version: str = ""  # x-switchyard-version: the model version that answered


Send = Callable[[httpx.AsyncClient, str, random.Random], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class Request:
    """One kind of request against the gateway at a base URL (`send(client, url, rng)`)."""

    kind: str
    send: Send


def _judge(
    kind: str, response: httpx.Response, body: bytes, started: float, finish: bytes
) -> Outcome:
    """Success: 200 and `finish` at the end of a stream (anywhere in a whole body)."""
    took = time.perf_counter() - started
    served = response.headers.get("x-switchyard-backend", "")
    version = response.headers.get("x-switchyard-version", "")
    status = response.status_code
    if status != 200:
        return Outcome(False, kind, status, f"HTTP {status}", took, served, version)
    if finish not in (body[-200:] if kind.endswith("stream") else body):
        return Outcome(False, kind, 200, "stream ended without its finish", took, served, version)
    return Outcome(True, kind, 200, "", took, served, version)


def chat(route: str, *, stream: bool = False, headers: dict[str, str] | None = None) -> Request:
    """OpenAI chat completions; a stream must end with `data: [DONE]`."""
    kind = "chat-stream" if stream else "chat"
    payload = orjson.dumps({"model": route, "messages": MESSAGES, "stream": stream})
    base_headers = {"content-type": "application/json", **(headers or {})}

    async def one(client: httpx.AsyncClient, url: str, rng: random.Random) -> Outcome:
        started = time.perf_counter()
        user = {"x-user-id": f"user-{rng.randrange(512)}"}
        async with client.stream(
            "POST",
            f"{url}/v1/chat/completions",
            content=payload,
            headers={**base_headers, **user},
        ) as response:
            body = await response.aread()
        finish = b"data: [DONE]" if stream else b'"choices"'
        return _judge(kind, response, body, started, finish)

    return Request(kind, one)


def ollama_chat(route: str, *, stream: bool = True) -> Request:
    """Ollama /api/chat; a stream must end with a line saying `"done":true`."""
    kind = "ollama-stream" if stream else "ollama"
    payload = orjson.dumps({"model": route, "messages": MESSAGES, "stream": stream})

    async def one(client: httpx.AsyncClient, url: str, rng: random.Random) -> Outcome:
        started = time.perf_counter()
        async with client.stream(
            "POST",
            f"{url}/api/chat",
            content=payload,
            headers={"content-type": "application/json", "x-user-id": f"u{rng.randrange(512)}"},
        ) as response:
            body = await response.aread()
        return _judge(kind, response, body, started, b'"done":true')

    return Request(kind, one)


@dataclass
class Tally:
    """What a load sent and how it went."""

    requests: int = 0
    failures: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.requests += 1
        self.by_kind[outcome.kind] += 1
        if outcome.served_by:
            self.served_by[outcome.served_by] += 1
        if outcome.ok:
            self.latencies.append(outcome.seconds)
        else:
            self.failures += 1
            self.reasons[f"{outcome.kind}: {outcome.reason}"] += 1

    @property
    def success_rate(self) -> float:
        return 1.0 if not self.requests else 1.0 - self.failures / self.requests

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "by_kind": dict(self.by_kind),
            "reasons": dict(self.reasons.most_common(5)),
        }


class Load:
    """`workers` coroutines cycling through `mix` against `url`, bounded in count and time."""

    def __init__(
        self,
        url: str,
        mix: Sequence[Request],
        *,
        workers: int = 4,
        limit: int = 100_000,
        seconds: float = 300.0,
        seed: int = 1,
        timeout: float = 30.0,
        on_outcome: Callable[[Outcome], None] | None = None,
        rate: float | None = None,
    ) -> None:
        self.url = url
        self.mix = tuple(mix)
        self.workers = workers
        self.limit = limit
        self.seconds = seconds
        self.seed = seed
        self.timeout = timeout
        self.tally = Tally()
        self.on_outcome = on_outcome
        # Requests per second for all workers together (None: as fast as answered).
        self.pace = workers / rate if rate else 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sent = 0
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Load:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        limits = httpx.Limits(max_connections=self.workers, max_keepalive_connections=self.workers)
        self._client = httpx.AsyncClient(timeout=self.timeout, limits=limits)
        deadline = time.monotonic() + self.seconds
        self._tasks = [asyncio.create_task(self._worker(i, deadline)) for i in range(self.workers)]

    async def stop(self) -> Tally:
        """Stop sending; requests in flight finish (each is bounded by `timeout`)."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        return self.tally

    @property
    def done(self) -> bool:
        """Every worker has finished (limit, time, or stopped)."""
        return all(t.done() for t in self._tasks)

    async def wait_for(self, count: int, timeout: float = 60.0) -> bool:
        """Wait until `count` requests have completed in all; False on timeout or done."""
        deadline = time.monotonic() + timeout
        while self.tally.requests < count and time.monotonic() < deadline and not self.done:
            await asyncio.sleep(0.02)
        return self.tally.requests >= count

    async def _worker(self, index: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        shift = index % len(self.mix)  # workers start at different kinds: a real mix at once
        kinds = itertools.cycle(self.mix[shift:] + self.mix[:shift])
        client = self._client
        assert client is not None
        while not self._stop.is_set() and self._sent < self.limit and time.monotonic() < deadline:
            self._sent += 1
            request = next(kinds)
            started = time.perf_counter()
            next_start = time.monotonic() + self.pace
            try:
                outcome = await request.send(client, self.url, rng)
            except httpx.HTTPError as exc:
                took = time.perf_counter() - started
                outcome = Outcome(False, request.kind, 0, type(exc).__name__, took)
            self.tally.add(outcome)
            if self.on_outcome is not None:
                self.on_outcome(outcome)
            if self.pace:
                await asyncio.sleep(max(0.0, next_start - time.monotonic()))
