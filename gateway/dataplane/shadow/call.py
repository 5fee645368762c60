"""One shadow copy: a request sent once to a shadow backend, its answer read and kept.

A `ShadowCall` is the shadow's side of a mirrored request. It rides the mirror's own
upstream pool (never the primaries' connections), is sent exactly once (no retry, no
fallback), reads the whole answer (a stream is consumed as it comes, never paced by
the client) and keeps at most `limit` bytes of it for the comparison. Every way it
can end is one outcome string, counted per shadow:

    ok, error_status (5xx), connect_error, timeout, reset (closed early),
    invalid_response (not HTTP), cancelled (gateway shutting down)

It also carries the primary's result, reported by the primary's exchange, so the pair
is compared once both are in (`ShadowMirror.settle`). The copy calls back into its
`CallOwner` (the mirror subclasses it), so this module sits below the mirror.
"""

from __future__ import annotations

import asyncio
import time

import httptools

from gateway.dataplane.http.upstream import UpstreamConnection, UpstreamPool
from gateway.dataplane.snapshot import Endpoint, Shadow
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.observability.tracing.context import without_traceparent
from gateway.observability.tracing.span import Span
from gateway.observability.tracing.tracer import RequestTrace

# Outcomes after which there is an answer to compare.
ANSWERED = frozenset({"ok", "error_status"})


class CallOwner:
    """What a copy calls back into (the `ShadowMirror`): its own upstream pool, its loop
    and clock, and `ended` once the copy is over."""

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop

    def now(self) -> float:
        """The monotonic clock of shadow deadlines."""
        return time.monotonic()

    def ended(self, call: ShadowCall) -> None:
        """The copy is over (`call.outcome` says how): count it, compare if all is in."""
        raise NotImplementedError


class ShadowCall:
    """The copy of one request to one shadow, and the primary's result beside it."""

    # Defaults live on the class, as in `Exchange`: a copy is created per sampled
    # request, and only what differs per copy is stored in __init__.
    conn: UpstreamConnection | None = None
    connect_task: asyncio.Task[None] | None = None
    parser: httptools.HttpResponseParser | None = None
    status = 0
    head_buf = b""
    head_done = False
    keep_alive = False
    complete_pending = False
    size = 0
    sent_at = 0.0
    done_at = 0.0
    deadline = float("inf")
    first_byte_deadline = float("inf")
    idle_deadline = float("inf")
    total_deadline = float("inf")
    outcome: str | None = None  # set once, when the copy ends
    # The primary came by gRPC (ModelInfer): its reply is read as a v2 answer to compare.
    grpc_primary = False
    # The primary's trace and this copy's span, when the primary is traced.
    trace: RequestTrace | None = None
    span: Span | None = None
    # (status, body or None if over the limit, seconds, variant, version), or a string
    # saying how the primary failed; None while it is under way. Set in __init__: mypyc
    # drops a class-level default of a union of three types.
    primary: tuple[int, bytes | None, float, str, str] | str | None
    # The monotonic time of the bytes being fed: the idle deadline's start, read once
    # per read from the backend rather than once per parser callback.
    fed_at = 0.0

    def __init__(
        self,
        mirror: CallOwner,
        shadow: Shadow,
        endpoint: Endpoint,
        route: str,
        protocol: str,
        path: bytes,
        method: bytes,
        target: bytes,
        headers: bytes,
        body: bytes,
        request_id: bytes,
        limit: int,
    ) -> None:
        self.mirror = mirror
        self.shadow = shadow
        self.endpoint = endpoint
        self.route = route
        self.protocol = protocol  # the route's: how the two answers are compared
        self.path = path  # the client's path: what kind of answer it is
        self.method = method
        self.target = target
        self.headers = headers  # header lines as they go upstream, host and length aside
        self.body = body
        self.request_id = request_id
        self.limit = limit
        self.chunks: list[bytes] = []
        self.primary = None

    # Sending ----------------------------------------------------------------------

    def traced(self, trace: RequestTrace, method: str) -> None:
        """Give the copy a CLIENT span under the primary's trace (before `send`)."""
        shadow = self.shadow
        span = self.span = trace.shadow(method, shadow.name, shadow.version, self.endpoint.backend)
        self.trace = trace
        self.headers = without_traceparent(self.headers) + trace.header(span)

    def send(self, now: float) -> None:
        """Send the copy, on an idle pooled connection or a new one."""
        endpoint = self.endpoint
        timeouts = self.shadow.timeouts
        self.total_deadline = self.deadline = now + timeouts.total
        conn = self.mirror.pool.take_idle(endpoint, now)
        if conn is not None:
            self._write(conn, now)
        else:
            self.connect_task = self.mirror.loop.create_task(self._connect(endpoint))

    async def _connect(self, endpoint: Endpoint) -> None:
        try:
            conn = await self.mirror.pool.connect(endpoint, self.shadow.timeouts.connect)
        except UpstreamError as exc:
            self.connect_task = None
            if self.outcome is None:
                self.end("timeout" if isinstance(exc, UpstreamTimeout) else "connect_error")
            return
        self.connect_task = None
        if self.outcome is not None:  # timed out or cancelled while connecting
            self.mirror.pool.release(conn, time.monotonic())
            return
        self._write(conn, time.monotonic())

    def _write(self, conn: UpstreamConnection, now: float) -> None:
        self.conn = conn
        conn.sink = self
        self.parser = httptools.HttpResponseParser(self)
        endpoint = self.endpoint
        assert conn.transport is not None
        body = self.body
        conn.transport.write(
            b"".join(
                (
                    self.method,
                    b" ",
                    endpoint.base_path_bytes,
                    self.target,
                    b" HTTP/1.1\r\nhost: ",
                    endpoint.host_header,
                    b"\r\n",
                    self.headers,
                    b"content-length: ",
                    str(len(body)).encode(),
                    b"\r\n\r\n",
                    body,
                )
            )
        )
        self.body = b""  # sent: the copy holds no request bytes from here on
        self.sent_at = time.perf_counter()
        self.first_byte_deadline = now + self.shadow.timeouts.first_byte
        self.deadline = min(self.first_byte_deadline, self.total_deadline)

    # Upstream callbacks (ResponseSink and the httptools parser protocol) -----------

    def feed(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.outcome is not None:
            return
        self.fed_at = self.mirror.now()
        if not self.head_done:
            # Kept until the head is parsed: its framing is read from it in one search,
            # not with a Python callback per header.
            self.head_buf = self.head_buf + data if self.head_buf else data
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            self.end("invalid_response")
            return
        if self.complete_pending:
            self.end("error_status" if self.status >= 500 else "ok")

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        self.status = parser.get_status_code()
        self.head_done = True
        head = self.head_buf
        # Only the head is kept (the first read may hold body bytes too): its framing
        # matters only if the backend closes the connection, so it is read then.
        self.head_buf = head[: head.find(b"\r\n\r\n") + 2]
        self._touch()

    def on_body(self, data: bytes) -> None:
        size = self.size + len(data)
        if size <= self.limit:
            self.chunks.append(data)
        self.size = size  # past the limit the rest is read and dropped
        self._touch()

    def on_message_complete(self) -> None:
        parser = self.parser
        self.keep_alive = parser is not None and parser.should_keep_alive()
        self.complete_pending = True

    def upstream_lost(self, exc: Exception | None) -> None:
        self.conn = None
        if self.outcome is not None:
            return
        if self.head_done and not self._framed():
            self.end("error_status" if self.status >= 500 else "ok")  # read until close
        else:
            self.end("reset")

    def _framed(self) -> bool:
        """Whether the answer's head gave its length (content-length, chunked); if not,
        it ends when the backend closes the connection."""
        probe = self.head_buf.lower()
        return b"\ncontent-length:" in probe or (
            b"\ntransfer-encoding:" in probe and b"chunked" in probe
        )

    def upstream_paused(self, paused: bool) -> None:
        return None  # the whole request went out in one write

    def _touch(self) -> None:
        self.idle_deadline = self.fed_at + self.shadow.timeouts.idle
        self.deadline = min(self.idle_deadline, self.total_deadline)

    # Ending ------------------------------------------------------------------------

    def on_deadline(self, now: float) -> None:
        """Called by the mirror's tick once `deadline` has passed."""
        if self.outcome is not None:
            return
        if (
            now >= self.total_deadline
            or (not self.head_done and self.conn is not None and now >= self.first_byte_deadline)
            or (self.head_done and now >= self.idle_deadline)
        ):
            self.end("timeout")
        elif not self.head_done and self.conn is None:
            self.deadline = self.total_deadline  # connecting: the connect timeout governs

    def end(self, outcome: str) -> None:
        """The copy is over: free its connection, count it, compare if all is in."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.done_at = time.perf_counter()
        self.deadline = float("inf")
        task, self.connect_task = self.connect_task, None
        if task is not None:
            task.cancel()
        conn, self.conn = self.conn, None
        self.parser = None
        if conn is not None:
            if outcome in ANSWERED and self.keep_alive:
                self.mirror.pool.release(conn, self.mirror.now())
            else:
                conn.abort()
        if self.trace is not None and self.span is not None:
            self.trace.shadow_ended(self.span, outcome, self.status)
        self.mirror.ended(self)

    @property
    def seconds(self) -> float | None:
        """Send to last byte, for a copy that got an answer."""
        if self.outcome not in ANSWERED or not self.sent_at:
            return None
        return self.done_at - self.sent_at

    def answer(self) -> bytes | None:
        """The answer's body, or None if it was larger than the limit."""
        return b"".join(self.chunks) if self.size <= self.limit else None
