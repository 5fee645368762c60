"""The span exporter: a bounded queue on the event loop, batched OTLP/HTTP POSTs off it.

`submit` is all the request path calls: a length check and a list extend, never a
wait. Finished spans are encoded to OTLP bytes at the end of the loop turn they were
submitted in, a slice at a time (`ENCODE_SLICE` per callback, so a burst cannot stall
requests), and the queue holds those bytes: span objects die young instead of
sitting for seconds in a queue the garbage collector would walk again and again (at
100% sampling that walk showed as multi-millisecond stalls in the p99). A background
task (`run`) wakes when a batch is full or `delay` has passed and POSTs it with a
total timeout, one request at a time. Whatever cannot be held or delivered is dropped
and counted by reason (`TraceCounters.dropped`): memory stays bounded by `max_queue`
encoded spans, the batch in flight included, whether the collector is slow, down or
refusing.

Failures the OTLP/HTTP specification calls transient (429, 502, 503, 504, and a
collector that cannot be reached or does not answer in time) are retried: the batch
goes back to the head of the queue and is sent again after the collector's
`Retry-After` (seconds; capped) or an exponential backoff with jitter, at most
`max_attempts` times in all; meanwhile new spans queue behind it (and are dropped as
`queue_full` once the bounded queue, which counts the batch in flight, is full, as
when the collector is slow). Any
other answer (400, 401, 413, ...) would fail again the same way: the batch is dropped
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Final

import httpx

from gateway.observability.trace_metrics import TraceCounters
from gateway.observability.tracing.config import TraceConfig
from gateway.observability.tracing.otlp import CONTENT_TYPE, Encoder
from gateway.observability.tracing.span import Span

log = logging.getLogger("switchyard.tracing")

SCOPE: Final = "switchyard"
ENCODE_SLICE: Final = 64  # spans encoded per loop callback at most
RETRY_AFTER: Final = 1.0  # seconds at least between a failed export and the next
MAX_BACKOFF: Final = 30.0  # seconds at most between two tries of one batch
MAX_ATTEMPTS: Final = 5  # tries of one batch, the first included, before it is dropped
SHUTDOWN_FLUSH: Final = 5.0  # seconds at most spent delivering what is queued at stop
# Answers the OTLP/HTTP specification lists as retryable ("Failures" in otlp.md).
RETRYABLE_STATUS: Final = frozenset({429, 502, 503, 504})


class SpanExporter:
    """Holds finished spans and ships them to an OTLP/HTTP collector in batches."""

    def __init__(
        self,
        config: TraceConfig,
        counters: TraceCounters,
        *,
        scope_version: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
        backoff: tuple[float, float] = (RETRY_AFTER, MAX_BACKOFF),
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.config = config
        self.backoff = backoff  # (first wait, longest wait) between tries of one batch
        self.max_attempts = max_attempts
        self._attempts = 0  # failed tries of the batch at the head of the queue
        self._in_flight = 0  # spans of the batch being exported now
        self.counters = counters
        self.max_queue = config.max_queue
        self.batch_size = config.batch_size
        self._pending: list[Span] = []  # submitted, encoded at the end of this loop turn
        self._encoding: asyncio.Handle | None = None
        self._queue: deque[bytes] = deque()  # encoded spans, oldest first
        self._encoder = Encoder(config.resource, SCOPE, scope_version)
        self._wake = asyncio.Event()
        self._transport = transport
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._headers = {"content-type": CONTENT_TYPE, **dict(config.headers)}
        if config.compression == "gzip":
            self._headers["content-encoding"] = "gzip"
        counters.queued = self.queued

    def queued(self) -> int:
        return len(self._queue) + len(self._pending)

    def submit(self, spans: Sequence[Span]) -> None:
        """Queue one request's spans, all or none (a full queue drops and counts them)."""
        pending = self._pending
        # The batch in flight counts too: a transient failure puts it back in the queue.
        if len(self._queue) + len(pending) + self._in_flight + len(spans) > self.max_queue:
            self.counters.dropped["queue_full"] += len(spans)
            return
        pending.extend(spans)
        if self._encoding is None:
            self._encoding = asyncio.get_running_loop().call_soon(self._encode_pending)

    def _encode_pending(self) -> None:
        """Encode a slice of the submitted spans; the rest on the next loop turn."""
        self._encoding = None
        pending = self._pending
        encode = self._encoder.span
        queue = self._queue
        for span in pending[:ENCODE_SLICE]:
            queue.append(encode(span))
        del pending[:ENCODE_SLICE]
        if pending:
            self._encoding = asyncio.get_running_loop().call_soon(self._encode_pending)
        if len(queue) >= self.batch_size:
            self._wake.set()

    # Background ---------------------------------------------------------------------

    def start(self) -> None:
        """Run the export loop as a task of the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        """Export forever: a full batch at once, a partial one every `delay` seconds."""
        async with self._client() as client:
            while True:
                if len(self._queue) < self.batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.config.delay or 0.001)
                self._wake.clear()
                while self._queue:
                    wait = await self._export(client)
                    if wait is not None:
                        await asyncio.sleep(wait)
                        break
                    if len(self._queue) < self.batch_size:
                        break  # a partial batch waits for the timer, as OTLP SDKs do

    async def aclose(self) -> None:
        """Stop the loop and deliver what is queued, for a few seconds at most."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._encoding is not None:
            self._encoding.cancel()
            self._encoding = None
        for span in self._pending:
            self._queue.append(self._encoder.span(span))
        self._pending.clear()
        if not self._queue:
            return
        try:
            async with asyncio.timeout(min(self.config.timeout, SHUTDOWN_FLUSH)):
                async with self._client() as client:
                    self.max_attempts = 1  # no waiting for a retry while stopping
                    while self._queue and await self._export(client) is None:
                        pass
        except TimeoutError:
            pass
        finally:
            self.counters.dropped["shutdown"] += len(self._queue)
            self._queue.clear()

    def _client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if self.config.certificate:
            verify = ssl.create_default_context(cafile=self.config.certificate)
        return httpx.AsyncClient(
            timeout=self.config.timeout, verify=verify, transport=self._transport
        )

    async def _export(self, client: httpx.AsyncClient) -> float | None:
        """POST one batch. None when it is done with (delivered, or dropped and counted
        by reason); else the seconds to wait before the next try."""
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
        count = self._in_flight = len(batch)
        reason = "shutdown"  # if cancelled before an outcome is known
        try:
            body = self._encoder.request(batch)
            if self.config.compression == "gzip":
                body = await asyncio.to_thread(gzip.compress, body, 6, mtime=0)
            try:
                async with asyncio.timeout(self.config.timeout):
                    response = await client.post(
                        self.config.endpoint, content=body, headers=self._headers
                    )
            except (TimeoutError, httpx.TimeoutException):
                reason = "timeout"
                self._failed(f"no answer within {self.config.timeout:g}s")
                wait, kept = self._again(batch, None)
            except (httpx.HTTPError, OSError) as exc:
                reason = "export_failed"
                self._failed(f"{type(exc).__name__}: {exc}")
                wait, kept = self._again(batch, None)
            else:
                status = response.status_code
                if 200 <= status < 300:
                    reason = ""
                    self._attempts = 0
                    self.counters.exported += count
                    self.counters.exports["ok"] += 1
                    if self._failing:
                        self._failing = False
                        log.info("trace export to %s works again", self.config.endpoint)
                    return None
                reason = "export_failed"
                self._failed(f"HTTP {status}")
                if status not in RETRYABLE_STATUS:
                    self._attempts = 0  # it would fail again the same way: dropped now
                    return max(self.config.delay, self.backoff[0])
                asked = _retry_after(response.headers.get("retry-after"))
                wait, kept = self._again(batch, asked)
            if kept:
                reason = ""
            return wait
        finally:
            self._in_flight = 0
            if reason:
                self.counters.dropped[reason] += count

    def _again(self, batch: list[bytes], asked: float | None) -> tuple[float, bool]:
        """After a transient failure: (seconds to wait, whether `batch` went back to
        the head of the queue for another try; not once it had `max_attempts`)."""
        self._attempts += 1
        first, longest = self.backoff
        if asked is not None:
            wait = min(asked, longest)
        else:
            # Exponential with jitter, so a fleet of gateways does not retry in step.
            wait = min(first * 2 ** (self._attempts - 1), longest) * random.uniform(0.8, 1.2)
        if self._attempts >= self.max_attempts:
            self._attempts = 0
            return max(self.config.delay, wait), False
        self._queue.extendleft(reversed(batch))
        self.counters.exports["retried"] += 1
        return wait, True

    def _failed(self, why: str) -> None:
        self.counters.exports["failed"] += 1
        if not self._failing:  # once per outage, not once per batch
            self._failing = True
            log.warning(
                "trace export to %s failed (%s); spans are dropped and counted in "
                "switchyard_trace_spans_dropped_total until it works again",
                self.config.endpoint,
                why,
            )


def _retry_after(value: str | None) -> float | None:
    """A `Retry-After` in seconds (the form collectors send); None if absent or a date."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
