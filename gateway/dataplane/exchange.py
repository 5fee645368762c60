"""One proxied request: pick, send, relay, retry, time out; all as callbacks.

The plain path runs without an asyncio task (measured +3 us, -11% req/s per request
with one): an idle pooled connection gets the request in one `write`, the upstream's
`data_received` feeds this object's response parser, and every upstream read becomes
one client `write` (a separate header write measured +6 us, -16%). A task appears only
when a new upstream connection must be opened.

Invariants:
- Nothing reaches the client before the response head is accepted, so a retry or
  fallback is possible until then and never after.
- After the head is relayed, any failure ends the client's response *incompletely*
  (an error event, then the connection closed without the final chunk), so a cut
  stream can never look like a clean finish.

Where an exchange stands is one value, `phase`; everything else it holds is a fact
about the response (framed, chunked, a stream...). The phases, in order:

    PICKING -> [QUEUED ->] [CONNECTING ->] WAITING -> RELAYING -> COMPLETE -> DONE
                                            |   ^
                                            v   | the next attempt (`_resend`)
                                          RESENDING

- `start` sends the first attempt, unless the route's flow control finds the pool
  saturated: then QUEUED, nothing sent, until the pool's queue releases it (`_released`:
  the first attempt goes out) or refuses it (`_refused`: 503/429, DONE), the queue
  timeout passes, or the client leaves (see dataplane.flow). Retries and fallbacks of
  an admitted request never queue again.

- `_send` starts an attempt: WAITING at once on an idle pooled connection, else
  CONNECTING until one is open (`_write` then moves it to WAITING).
- `on_headers_complete` in WAITING: RESENDING for a status the route retries (its
  answer is ignored, the next attempt goes out on the next loop turn), WAITING still
  after a 1xx, else RELAYING: the head is accepted and nothing is retried from there.
- `on_message_complete` in RELAYING: COMPLETE; `feed` finishes it once this read's
  bytes are flushed (completing may start the client's next pipelined request).
- A failed attempt before RELAYING starts the next one (`_send`: retry, fallback) or
  ends in DONE with the gateway's own error; from RELAYING on it cuts the response.
- DONE is final: completed, answered with an error, cut, or the client left. Parser
  callbacks outside their phase (a backend writing past its answer) are ignored.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

import httptools
import orjson
from httptools import HttpResponseParser

from gateway.dataplane.decide import Decision
from gateway.dataplane.feedback.groundtruth import MAX_CAPTURE_BYTES
from gateway.dataplane.feedback.ids import MAC_TEXT
from gateway.dataplane.flow import FlowGate, Waiter
from gateway.dataplane.http import wire
from gateway.dataplane.http.server import ClientConnection, ResponseSource
from gateway.dataplane.pick import attempt_failed, first_target, retry_target, room
from gateway.dataplane.quota import Charge
from gateway.dataplane.scorers import Ask
from gateway.dataplane.shared import SharedState
from gateway.dataplane.snapshot import Endpoint, Variant
from gateway.dataplane.styles import ErrorStyle
from gateway.dataplane.translate import Translator
from gateway.errors import (
    GatewayError,
    NoHealthyUpstream,
    Overloaded,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.observability.flow_metrics import ADMITTED
from gateway.observability.histogram import bucket
from gateway.observability.metrics import RequestSeries
from gateway.observability.tracing.context import (
    TRACEPARENT,
    parse_traceparent,
    without_traceparent,
)
from gateway.observability.tracing.record import RequestRecord
from gateway.observability.tracing.tracer import RequestTrace, operation_for

if TYPE_CHECKING:
    from gateway.dataplane.http.upstream import UpstreamConnection

# Exchange.phase (see the module's docstring); ordered: comparisons read "before" and
# "from ... on". Final ints: compiled, each test is one machine compare.
PICKING: Final = 0  # created; no attempt sent yet
QUEUED: Final = 1  # waiting in a saturated pool's queue (flow control); nothing sent
CONNECTING: Final = 2  # an attempt waits for a new upstream connection
WAITING: Final = 3  # the request is written; no response head accepted yet
RESENDING: Final = 4  # a status the route retries came: ignored, the next attempt is due
RELAYING: Final = 5  # the head went to the client: the body follows, no retry from here
COMPLETE: Final = 6  # the backend's response is whole; ends once this read is flushed
DONE: Final = 7  # over: completed, answered with an error, cut, or the client left

_EVENT_STREAM = b"text/event-stream"
# Fronts whose request body names the model: there a variant's `model` rewrites it.
_MODEL_IN_BODY = frozenset({"openai", "ollama"})
_MAX_RESPONSE_HEAD = 64 * 1024
# Response fields never relayed (RFC 9110 7.6.1 hop-by-hop, plus our own namespace),
# matched in "\n" + the lower-cased header block: the leading "\n" is a literal prefix
# the regex engine scans for quickly, so only line starts are tried.
# Generations whose chunks and usage feed the token metrics.
_GENERATION_PATHS = frozenset(
    {b"/v1/chat/completions", b"/v1/completions", b"/api/chat", b"/api/generate"}
)
# Framing and type of a backend response whose body the gateway translates.
_FRAMING_HEADER = re.compile(
    rb"^(?:content-length|content-type)[ \t]*:[^\r\n]*\r\n", re.IGNORECASE | re.MULTILINE
)
_DROPPED_RESPONSE_HEADER = re.compile(
    rb"\n(?:connection|keep-alive|proxy-connection|proxy-authenticate|te|trailer"
    rb"|transfer-encoding|upgrade|x-request-id|x-switchyard-[a-z0-9-]*):"
)


_INTERNAL_NAME = re.compile(rb"[a-z0-9-]*")


class ResponseFilter(Protocol):
    """Turns a backend's response body into the client's (the Translator is one)."""

    front: str  # the client's protocol
    stream: bool  # the client gets an event stream
    ok: bool  # the backend's status was a success

    def start(self, status: int) -> None: ...
    def content_type(self) -> bytes: ...
    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class Exchange(ResponseSource):
    """State of one client request while it is proxied (possibly several attempts)."""

    # The parser callbacks an exchange does not take, as None: httptools asks for each
    # callback with getattr(protocol, name, None), and every missing one raised (and
    # formatted the message of) an AttributeError, five per exchange (~3k instructions).
    on_header: ClassVar[None] = None
    on_message_begin: ClassVar[None] = None
    on_chunk_header: ClassVar[None] = None
    on_chunk_complete: ClassVar[None] = None
    on_status: ClassVar[None] = None
    # Defaults live on the class: an exchange is created per request, and storing
    # forty attributes measured ~1.5 us. Only what differs per request is set in __init__.
    attempts = 0
    ep_index = 0
    endpoint: Endpoint | None = None
    series: RequestSeries | None = None
    upstream: UpstreamConnection | None = None
    parser: httptools.HttpResponseParser | None = None
    connect_task: asyncio.Task[None] | None = None
    tried: tuple[tuple[int, int], ...] = ()
    phase = PICKING
    head_buf = b""
    upstream_keep = False
    chunked_out = False
    framed = False
    sse = False
    status = 0
    sent_at = 0.0
    last_activity = 0.0
    first_byte_deadline = 0.0
    translator: ResponseFilter | None = None
    # From fronts that route by URL path (KServe v2, JSON services): the upstream target
    # per variant index, and what filters the response body (None: relayed as it is).
    targets: tuple[bytes, ...] | None = None
    response_filter: Callable[[], ResponseFilter] | None = None
    streaming = False  # the response is an SSE or NDJSON stream
    count_tokens = False  # an LLM generation: time its chunks, read its usage
    strip_usage = False  # we asked for a usage chunk the client did not: drop it
    first_chunk_at = 0.0
    last_chunk_at = 0.0
    # A stream's chunks in the read being parsed, relayed together when the read ends
    # (`_relay_read`); None for other responses, relayed chunk by chunk.
    gathered: list[bytes] | None = None
    # Tracing: set for a sampled request only (tracing off or not sampled: None, and
    # nothing below touches tracing but a None check). Token counts of this request,
    # from the backend's usage report (-1: none), for its span and access log line.
    trace: RequestTrace | None = None
    trace_line = b""  # the attempt's `traceparent` header line, while traced
    shadow_sampled = False
    input_tokens = -1
    output_tokens = -1
    # Feedback (routes with an experiment or rollout block): the signed id of the
    # variant serving now, as a response header line; `remember`: the request id is a
    # plain one, remembered by this process at completion (dataplane.feedback).
    tracked = False
    remember = False
    signed_for: Variant | None = None
    feedback_id = b""
    feedback_line = b""
    # Ground truth (routes with a `ground_truth` block, buffered responses): the body so
    # far while the response is held until whole, to read its prediction and put the
    # prediction-carrying id in its head (`_capture`); None: relayed as it comes.
    held_body: list[bytes] | None = None
    held_bytes = 0
    # Flow control (routes with a `flow` block), while the request waits in its pool's
    # queue: its place there and the gate it waits at; `refusal` is the Retry-After line
    # of a queue's refusal.
    waiter: Waiter | None = None
    flow_gate: FlowGate | None = None
    refusal = b""
    # What the client's key was pre-charged (quotas; None: no limits apply), settled to
    # the backend's usage once, whichever way the request ends (`_settle`).
    charge: Charge | None = None
    # What the request gives the pool's scored picker (routes with a `picker`), else None.
    ask: Ask | None = None

    def __init__(
        self,
        plane: SharedState,
        client: ClientConnection,
        request: wire.Request,
        decision: Decision,
        body: bytes,
        style: ErrorStyle,
        parsed: dict[str, Any] | None = None,
    ) -> None:
        self.plane = plane
        self.parsed = parsed
        self.count_tokens = request.path in _GENERATION_PATHS
        self.client = client
        self.request = request
        self.decision = decision
        self.body = body
        self.style = style
        self.target = request.path + request.query if request.query else request.path
        self.fwd_headers = _forward_headers(request)
        self.variant: Variant = decision.variant
        route = decision.route
        if route.name in plane.exposures.routes or route.ground_truth is not None:
            self.tracked = self.remember = True  # untracked routes: these two tests
        self.out: list[bytes] = []
        self.keep_alive = request.keep_alive and not plane.draining
        self.total_deadline = plane.now + decision.route.timeouts.total
        self.deadline = self.total_deadline  # checked by the data plane's tick
        tracer = plane.tracer
        if tracer is not None:
            trace = tracer.start(request.fields, request.received_at)
            if trace is not None:
                # Sampled: the backend gets our attempt's traceparent, not the caller's.
                self.trace = trace
                self.fwd_headers = without_traceparent(self.fwd_headers)

    # Attempts -------------------------------------------------------------------

    def start(self) -> None:
        # The decided variant, else its fallbacks (no retry is spent: nothing was sent),
        # else the panic pick; the gRPC front chooses with the same routine.
        target = first_target(self.decision, self.plane.now, self.plane.turns, None, self.ask)
        if target is not None:
            variant, idx = target
            gate = variant.flow
            if gate is not None:
                idx = self._admit(gate, variant, idx)
                if idx < 0:
                    return  # waiting in the pool's queue, or refused
            self._send(variant, idx)
            return
        self._respond_error(
            NoHealthyUpstream(
                f"route '{self.decision.route.name}': every endpoint of variant "
                f"'{self.variant.name}' and its fallbacks is ejected or unavailable"
            )
        )

    def _admit(self, gate: FlowGate, variant: Variant, idx: int) -> int:
        """Flow control: the endpoint of `variant` to send to now (`idx`, the picked one,
        when it has room), or -1 when the request waits in the pool's queue or was
        refused. Unsaturated, this is a comparison of counters."""
        request = self.request
        key = request.key
        try:
            if key is None:
                level, tenant = gate.identify(request.fields, -1, "")
            else:
                level, tenant = gate.identify(request.fields, key.priority, key.tenant or key.name)
        except GatewayError as err:
            self._respond_error(err)
            return -1
        queue = gate.queue
        now = self.plane.now
        if queue.waiting == 0 or level > queue.highest():  # nobody to wait behind
            found = room(gate, variant, level, now, idx)
            if found >= 0:
                queue.series.count(tenant, level, ADMITTED)
                return found
        # Saturated, or others of its priority wait already: wait, in order, nothing sent.
        self.variant = variant
        self.flow_gate = gate
        self.phase = QUEUED
        self.deadline = min(now + gate.timeout, self.total_deadline)
        waiter = Waiter(
            level, tenant, gate.weight(tenant), now, self._room, self._released, self._refused
        )
        self.waiter = waiter
        queue.offer(waiter, gate.max_queue)
        queue.pump(now)  # room may have come since the last release (it is still due)
        return -1

    def leaves_on_eof(self) -> bool:
        return self.phase == QUEUED

    def _room(self, now: float) -> int:
        gate, waiter = self.flow_gate, self.waiter
        if gate is None or waiter is None:
            return -1
        return room(gate, self.variant, waiter.level, now, -1)

    def _released(self, idx: int) -> None:
        """The queue sends this request to endpoint `idx` of its variant now."""
        self.waiter = None
        if self.phase == QUEUED:
            self.phase = PICKING
            self.deadline = self.total_deadline
            self._send(self.variant, idx)

    def _refused(self, err: GatewayError) -> None:
        """The queue sheds this request, or it waited too long: 503 or 429."""
        self.waiter = None
        if self.phase == QUEUED:
            if isinstance(err, Overloaded):
                self.refusal = b"retry-after: %d\r\n" % err.retry_after
            self._respond_error(err)

    def _sign(self, variant: Variant) -> None:
        """Mint the signed feedback id of `variant` serving this request (before its
        first attempt; again only if a fallback variant takes over). A request id the
        gateway made becomes that id: the backend, the logs and the client see one."""
        self.signed_for = variant
        route = self.decision.route.name
        fid = self.plane.feedback_ids.mint(route, variant.name, variant.version)
        self.feedback_id = fid
        if not fid:  # a name too long to sign: the plain id, remembered here
            self.feedback_line = b""
            return
        self.feedback_line = b"x-switchyard-feedback-id: " + fid + b"\r\n"
        if self.decision.route.ground_truth is not None:
            # The claim key (the id's MAC) on the request's drift row, if it was sampled.
            self.plane.tap.keyed(self.decision, fid[-MAC_TEXT:].decode())
        request = self.request
        if request.minted:
            request.request_id = fid
            self.remember = False
            fwd = _forward_headers(request)
            self.fwd_headers = fwd if self.trace is None else without_traceparent(fwd)

    def _send(self, variant: Variant, idx: int) -> None:
        if self.tracked and variant is not self.signed_for:
            self._sign(variant)
        self.attempts += 1
        self.variant = variant
        self.ep_index = idx
        self.tried += ((variant.index, idx),)
        endpoint = self.endpoint = variant.endpoints[idx]
        self.series = variant.series[idx]
        endpoint.state.in_flight += 1
        trace = self.trace
        if trace is not None:
            self.trace_line = trace.attempt(
                self.request.method.decode(),
                variant.name,
                variant.version,
                endpoint.backend,
                endpoint.host,
                endpoint.port,
            )
        conn = self.plane.pool.take_idle(endpoint, self.plane.now)
        if conn is not None:
            self._write(conn)
        else:
            self.phase = CONNECTING
            self.connect_task = self.plane.loop.create_task(self._connect(endpoint))

    async def _connect(self, endpoint: Endpoint) -> None:
        try:
            conn = await self.plane.pool.connect(endpoint, self.decision.route.timeouts.connect)
        except UpstreamError as exc:
            self.connect_task = None
            if self.phase != DONE:
                self._attempt_failed(exc)
            return
        self.connect_task = None
        if self.phase == DONE:  # the client left while we were connecting
            self.plane.pool.release(conn, time.monotonic())
            return
        self._write(conn)

    def _write(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.sink = self
        self.parser = HttpResponseParser(self)
        self.phase = WAITING
        self.head_buf = b""
        self.framed = False
        self.sse = False
        endpoint = self.endpoint
        assert endpoint is not None
        body = self.body
        target = self.target
        variant = self.variant
        self.translator = None
        if variant.backend_protocol and variant.backend_protocol != self.style.protocol:
            # Another protocol behind this variant: translate (see translate.py).
            translator = self.translator = Translator(
                self.style.protocol,
                variant.backend_protocol,
                self.request.path,
                self.parsed or {},
                self.decision.route.name,
                variant.upstream_model or self.decision.route.name,
                self.request.request_id.decode(),
            )
            translator.max_chunk = self.plane.settings.limits.max_stream_chunk_bytes
            target, body = translator.request()
        elif self.targets is not None:
            # The model is named in the path (or not at all): the body goes as it came.
            target = self.targets[variant.index]
            if self.response_filter is not None:
                self.translator = self.response_filter()
        elif variant.upstream_model is not None and self.style.protocol in _MODEL_IN_BODY:
            body = rewrite_model(body, variant.upstream_model)
        assert conn.transport is not None
        conn.transport.write(
            b"".join(
                (
                    self.request.method,
                    b" ",
                    endpoint.base_path_bytes,
                    target,
                    b" HTTP/1.1\r\nhost: ",
                    endpoint.host_header,
                    b"\r\n",
                    self.fwd_headers,
                    self.trace_line,
                    b"content-length: ",
                    str(len(body)).encode(),
                    b"\r\n\r\n",
                    body,
                )
            )
        )
        self.sent_at = perf_counter()
        self.first_byte_deadline = self.plane.now + self.decision.route.timeouts.first_byte
        self.deadline = min(self.first_byte_deadline, self.total_deadline)
        if self.trace is not None:
            path = target.split(b"?", 1)[0].decode("utf-8", "replace")
            self.trace.attempt_sent(f"http://{endpoint.backend}{endpoint.base_path}{path}")

    def _end_attempt(self, ok: bool) -> None:
        endpoint = self.endpoint
        if endpoint is None:
            return
        state = endpoint.state
        state.in_flight -= 1
        gate = self.variant.flow
        if gate is not None and gate.queue.waiting > 0:  # a slot freed in a saturated pool
            gate.queue.schedule(self.plane.loop)
        if ok:
            state.consecutive_failures = 0  # EndpointState.record_success, inlined
        else:
            attempt_failed(self.decision, self.variant, endpoint, self.series, self.plane.now)
        self.endpoint = None
        if self.trace is not None:
            self.trace.attempt_ended(self.status)

    def _next_target(self, kind: str) -> tuple[Variant, int] | None:
        """Where to retry after a failure of `kind`, or None (spends retry budget)."""
        return retry_target(
            self.decision,
            self.attempts,
            self.tried,
            kind,
            self.plane.now,
            self.plane.turns,
            None,
            self.ask,
        )

    def _attempt_failed(self, err: UpstreamError) -> None:
        if self.trace is not None:
            self.trace.attempt_failed(err.code, err.message)
        conn = self.upstream
        fresh = conn is None or conn.served == 0
        self._detach_upstream(abort=True)
        if self.phase >= RELAYING:
            self._end_attempt(ok=False)
            self._cut_client(err)
            return
        if not fresh and err.retryable_kind == "reset" and self.status == 0:
            # A reused keep-alive connection the backend had already closed: the request
            # never reached it. Resend on a fresh connection without spending a retry.
            endpoint, variant, idx = self.endpoint, self.variant, self.ep_index
            self._end_attempt(ok=True)
            if endpoint is not None:
                self.attempts -= 1
                self.tried = self.tried[:-1]
                self._send(variant, idx)
                return
        self._end_attempt(ok=False)
        nxt = self._next_target(err.retryable_kind)
        if nxt is not None:
            self._send(*nxt)
        else:
            self._respond_error(err)

    def _detach_upstream(self, abort: bool) -> None:
        conn, self.upstream = self.upstream, None
        self.parser = None
        if conn is not None:
            conn.sink = None
            if abort:
                conn.abort()

    # Upstream callbacks (ResponseSink and httptools parser protocol) -----------------

    def feed(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            return
        if self.phase == WAITING:
            # Keep the raw head: it is relayed nearly verbatim (see on_headers_complete).
            self.head_buf = self.head_buf + data if self.head_buf else data
            if len(self.head_buf) > _MAX_RESPONSE_HEAD and b"\r\n\r\n" not in self.head_buf:
                self._attempt_failed(
                    UpstreamProtocolError(f"backend {self._backend()} sent an oversized head")
                )
                return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.gathered:
                self._relay_read()  # what arrived whole before the error goes out first
            if self.phase != DONE and self.phase != RESENDING:
                cause = (
                    exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
                )
                what = (
                    f"a body the gateway could not translate ({cause!r})"
                    if cause is not None
                    else f"invalid HTTP: {exc}"
                )
                self._attempt_failed(
                    UpstreamProtocolError(f"backend {self._backend()} sent {what}")
                )
                return
        if self.gathered:
            self._relay_read()
        if self.out and self.held_body is None:
            self._flush()
        if self.phase == COMPLETE:
            self._finish_ok()

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser is None or self.phase != WAITING:
            return
        status = parser.get_status_code()
        self.status = status
        now = self.last_activity = self.plane.now
        idle_deadline = now + self.decision.route.timeouts.idle
        self.deadline = min(idle_deadline, self.total_deadline)
        if status in self.decision.route.retries.statuses:
            nxt = self._next_target(str(status))
            if nxt is not None:
                # Retry: nothing has reached the client. The parser is mid-feed, so stop
                # listening to it now and resend on the next loop turn.
                self.phase = RESENDING
                self.out.clear()
                self._detach_upstream(abort=True)
                self._end_attempt(ok=False)
                self.status = 0
                self.plane.loop.call_soon(self._resend, nxt)
                return
        if status < 200:  # 1xx interim answers are not relayed (we never send Expect)
            self.head_buf = self.head_buf[self.head_buf.find(b"\r\n\r\n") + 4 :]
            return  # still WAITING: the final head follows
        # The header block is relayed as the backend wrote it, minus hop-by-hop and
        # internal fields, read in one pass over its lines (`scan_head`; a Python
        # callback per header measured several microseconds slower).
        raw = self.head_buf
        self.head_buf = b""
        start = raw.find(b"\r\n") + 2
        block, framed, ctype, chunked = scan_head(raw[start : raw.find(b"\r\n\r\n", start - 2) + 2])
        self.framed = framed
        self.sse = ctype.startswith(_EVENT_STREAM)
        if chunked:
            self.chunked_out = True
        translator = self.translator
        if translator is not None:
            # The body changes shape and length: drop the backend's framing and type.
            translator.start(status)
            block = _FRAMING_HEADER.sub(b"", block)
            block += b"content-type: " + translator.content_type() + b"\r\n"
            self.chunked_out = True  # the client's body length is unknown until the end
            self.sse = translator.front == "openai" and translator.stream and translator.ok
        self.streaming = self.sse or ctype.startswith(b"application/x-ndjson")
        if self.streaming and translator is None:
            self.gathered = []
        self.phase = RELAYING
        no_body = status in (204, 304)
        if not self.framed and not no_body:
            self.chunked_out = True  # read-until-close body: re-frame it for the client
        if not self.request.http_11:
            if self.chunked_out:
                self.keep_alive = False  # HTTP/1.0 client: body ends when we close
            self.chunked_out = False
        endpoint_lines = self.variant.header_lines[self.ep_index]
        if self.tracked:
            endpoint_lines += self.feedback_line
        if self.ask is not None and self.ask.issued:
            endpoint_lines += self.ask.issued  # the session token (session_tokens)
        self.out = [
            wire.status_line(status),
            block,
            b"x-request-id: ",
            self.request.request_id,
            b"\r\n",
            endpoint_lines,
            b"transfer-encoding: chunked\r\n" if self.chunked_out else b"",
            b"" if self.keep_alive else b"connection: close\r\n",
            b"\r\n",
        ]
        if self.decision.route.ground_truth is not None and status < 300:
            self._hold()

    def on_body(self, data: bytes) -> None:
        if self.phase != RELAYING:
            return
        gathered = self.gathered
        if gathered is not None:
            # A stream: its chunks (one token each on vLLM, often many per read) are
            # relayed per read, as one client chunk. Per chunk this is all the work;
            # re-framed one by one they measured ~0.3 us each, compiled.
            gathered.append(data)
            return
        trace = self.trace
        if trace is not None and trace.response_model is None:
            trace.saw_body(data)  # the model the backend names, from its first chunk
        if self.count_tokens and self.translator is None:
            data = self._observe_tokens(data)
            if not data:
                return  # an empty chunk would end the client's body
        if self.translator is not None:
            data = self.translator.feed(data)
            if not data:
                return
        held = self.held_body
        if held is not None:
            held.append(data)
            self.held_bytes += len(data)
            if self.held_bytes > MAX_CAPTURE_BYTES:
                self._release("too_large")
        out = self.out
        if self.chunked_out:
            # Three parts, joined once with the rest of this read in `_flush`.
            out.append(wire.chunk_head(len(data)))
            out.append(data)
            out.append(b"\r\n")
        else:
            out.append(data)
        self.last_activity = self.plane.now

    def _relay_read(self) -> None:
        """Relay the stream chunks of the read just parsed: timed and scanned for usage
        once, framed as one chunk (HTTP gives chunk boundaries no meaning; SSE and NDJSON
        clients read events from the bytes, as they do behind nginx)."""
        gathered = self.gathered
        if gathered is None:
            return
        data = gathered[0] if len(gathered) == 1 else b"".join(gathered)
        gathered.clear()
        trace = self.trace
        if trace is not None and trace.response_model is None:
            trace.saw_body(data)
        if self.count_tokens:
            self._time_events(data)
            data = self._observe_tokens(data)
            if not data:
                return
        out = self.out
        if self.chunked_out:
            out.append(wire.chunk_head(len(data)))
            out.append(data)
            out.append(b"\r\n")
        else:
            out.append(data)
        self.last_activity = self.plane.now

    def _time_events(self, data: bytes) -> None:
        """Time to the first token, and the gaps between the events of a stream as they
        arrive: the first event of a read after the time since the last read's, the
        others of the same read after none (they came together)."""
        series = self.series
        if series is None:
            return
        # An SSE event is counted by its `data:` field (counting the blank lines that end
        # events, in both line-end styles, measured ~200k instructions per 36 KB read);
        # an NDJSON one by its newline.
        events = data.count(b"data:") if self.sse else data.count(b"\n")
        now = perf_counter()
        if self.first_chunk_at == 0.0:
            self.first_chunk_at = now
            series.ttft.observe(now - self.sent_at)
            events -= 1
        elif events > 0:
            series.itl.observe(now - self.last_chunk_at)
            events -= 1
        else:
            return  # the rest of an event: timed when its start came
        if events > 0:
            series.itl.observe_many(0.0, events)
        self.last_chunk_at = now

    # Ground truth ---------------------------------------------------------------------

    def _hold(self) -> None:
        """A success of a ground-truth route: hold the response until it is whole (a
        buffered JSON answer), so its head can carry the prediction's id."""
        if self.streaming:
            self._capture_failed("streamed")
        elif not self.feedback_id:
            self._capture_failed("unsigned")
        else:
            self.held_body = []
            self.held_bytes = 0

    def _release(self, reason: str) -> None:
        """Give up capturing: relay what is held and the rest as it comes."""
        self.held_body = None
        self._capture_failed(reason)

    def _capture_failed(self, reason: str) -> None:
        self.plane.metrics.ground_truth.failed(self.decision.route.name, reason)

    def _capture(self, held: list[bytes]) -> None:
        """The whole response is here: read the prediction, mint the version 2 id and
        put it in the held head (`out[5]`: the endpoint's header lines)."""
        self.held_body = None
        truth = self.decision.route.ground_truth
        if truth is None:
            return
        found = truth.extract(b"".join(held))
        if isinstance(found, str):
            self._capture_failed(found)
            return
        predicted, score = found
        fid = self.plane.feedback_ids.with_prediction(self.feedback_id, predicted, score)
        if not fid:
            self._capture_failed("too_long")
            return
        self.feedback_id = fid  # a plain id's log entry (and its claim) use it too
        # Swapped in place: the held head's endpoint lines (out[5]) may carry more than
        # the id, such as an issued session's token.
        line = b"x-switchyard-feedback-id: " + fid + b"\r\n"
        self.out[5] = self.out[5].replace(self.feedback_line, line, 1)
        self.feedback_line = line
        variant = self.variant
        self.plane.metrics.ground_truth.captured(
            self.decision.route.name, variant.name, variant.version
        )

    def _observe_tokens(self, data: bytes) -> bytes:
        """Token counts from the usage report (streams are timed by `_time_events`)."""
        series = self.series
        if series is None:
            return data
        # Usage comes once, at the end: searched for from the end, then the counts
        # after it, no JSON parse (and no regex: two of those measured ~2 us per
        # response). With include_usage every other chunk carries `"usage": null`
        # (OpenAI, vLLM): only an object is the report. Ollama's counts are top-level
        # fields, searched for from the start (and only on Ollama routes: every
        # streamed chunk passes here).
        at = _usage_object(data)
        if at >= 0 or (self.style.protocol == "ollama" and b'"eval_count"' in data):
            at = max(at, 0)
            prompt = _count_after(data, b'"prompt_tokens"', b'"prompt_eval_count"', at)
            done = _count_after(data, b'"completion_tokens"', b'"eval_count"', at)
            if prompt >= 0:
                series.prompt_tokens += prompt
                self.input_tokens = prompt
            if done >= 0:
                series.completion_tokens += done
                self.output_tokens = done
            if self.strip_usage and self.sse:
                data = _without_usage_event(data, at)
        return data

    def on_message_complete(self) -> None:
        if self.phase != RELAYING:
            return
        if self.gathered:
            self._relay_read()  # the last chunks come before the last-chunk marker
        if self.translator is not None:
            tail = self.translator.finish()
            if tail:
                self.out.append(b"%x\r\n%s\r\n" % (len(tail), tail) if self.chunked_out else tail)
        if self.chunked_out:
            self.out.append(wire.LAST_CHUNK)
        held = self.held_body
        if held is not None:
            self._capture(held)
        # Completion waits until `feed` has flushed what this read produced: completing
        # may start the client's next pipelined request, whose bytes must come after.
        self.phase = COMPLETE
        parser = self.parser
        self.upstream_keep = parser is not None and parser.should_keep_alive()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if self.phase == DONE or self.phase == RESENDING:
            return
        if self.phase == RELAYING and not self.framed:
            # Read-until-close body: the close is the end of the message.
            self.on_message_complete()
            if self.out:
                self._flush()
            self._finish_ok()
            return
        detail = f": {exc}" if exc else ""
        self._attempt_failed(
            UpstreamProtocolError(
                f"backend {self._backend()} closed the connection before the response "
                f"was complete{detail}"
            )
        )

    def upstream_paused(self, paused: bool) -> None:
        self.client.pause_reading_for_upstream(paused)

    def _resend(self, nxt: tuple[Variant, int]) -> None:
        if self.phase == RESENDING:  # not ended (client gone, timed out) in the meantime
            self._send(*nxt)

    # Client side --------------------------------------------------------------------

    def _flush(self) -> None:
        out = self.out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        client = self.client
        if not client.closing and client.transport is not None:
            client.transport.write(data)

    def client_paused(self, paused: bool) -> None:
        """Client cannot take more: stop reading the backend (backpressure)."""
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            if paused:
                upstream.transport.pause_reading()
            else:
                upstream.transport.resume_reading()

    def client_gone(self) -> None:
        """The client closed its connection: cancel the backend's work by closing ours."""
        if self.phase == DONE:
            return
        waiter = self.waiter
        if waiter is not None:  # waiting in a queue: leave it
            self.waiter = None
            if waiter.queue is not None:
                waiter.queue.leave(waiter)
        if self.charge is not None:
            self._settle(self.phase >= RELAYING)
        self.phase = DONE
        task, self.connect_task = self.connect_task, None
        if task is not None:
            task.cancel()
        self._detach_upstream(abort=True)
        self._end_attempt(ok=True)  # the backend did nothing wrong
        if self.series is not None:
            self.series.by_class[0] += 1
        self.decision.route.counters.errors_by_code["client_closed"] = (
            self.decision.route.counters.errors_by_code.get("client_closed", 0) + 1
        )
        if self.trace is not None or self.plane.access_log is not None:
            self._report(None, "client_closed")

    def _settle(self, answered: bool) -> None:
        """Reconcile the key's charge to the usage the backend reported (see quota)."""
        charge = self.charge
        if charge is not None:
            self.charge = None
            charge.settle(self.variant.version, self.input_tokens, self.output_tokens, answered)

    def _complete(self) -> None:
        self.phase = DONE
        if self.charge is not None:
            self._settle(self.status < 400)
        self._end_attempt(ok=self.status < 500)
        series = self.series
        if series is not None:
            end = perf_counter()
            total = end - self.request.received_at
            upstream = end - self.sent_at
            series.by_class[self.status // 100 if self.status < 600 else 5] += 1
            # Histogram.observe, inlined: this runs once per request.
            h = series.duration
            h.counts[bucket(h.bounds, total)] += 1
            h.total += total
            h = series.upstream
            h.counts[bucket(h.bounds, upstream)] += 1
            h.total += upstream
            added = total - upstream if total > upstream else 0.0
            h = series.overhead
            h.counts[bucket(h.bounds, added)] += 1
            h.total += added
            if self.remember:  # a plain id of a tracked route: this process attributes it
                self.plane.exposures.record(
                    self.request.request_id, series, self.plane.now, self.feedback_id
                )
            if self.trace is not None:  # the latency histogram links to this trace
                series.duration.exemplar(total, self.trace.trace_hex, time.time())
        if self.trace is not None or self.plane.access_log is not None:
            self._report(None, str(self.status) if self.status >= 500 else "")
        self.client.exchange_done(self.keep_alive)

    def _report(self, err: GatewayError | None, error_type: str) -> None:
        """How the request ended, to its trace and the access log (one of them is on)."""
        request = self.request
        variant = self.variant
        route = self.decision.route
        trace = self.trace
        model = trace.response_model if trace is not None else None
        record = RequestRecord(
            method=request.method.decode(),
            path=request.path.decode("utf-8", "replace"),
            request_id=request.request_id.decode(),
            route=route.name,
            operation=operation_for(request.path),
            variant=variant.name,
            version=variant.version,
            endpoint=variant.endpoints[self.ep_index].backend if self.attempts else "",
            status=err.status if err is not None else self.status,
            attempts=self.attempts,
            fallback=variant is not self.decision.variant,
            shadow_sampled=self.shadow_sampled,
            stream=self.streaming,
            response_model=model or variant.upstream_model or route.name,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            ttft=self.first_chunk_at - self.sent_at if self.first_chunk_at else -1.0,
            duration=perf_counter() - request.received_at,
            error_type=err.code if err is not None else error_type,
            error_message=err.message if err is not None else "",
        )
        if trace is not None:
            trace.finish(record, err)
        access_log = self.plane.access_log
        if access_log is not None:
            trace_id = span_id = ""
            if trace is not None:
                trace_id, span_id = trace.trace_hex, trace.span_hex
            elif request.fields is not None and TRACEPARENT in request.fields:
                caller = parse_traceparent(request.fields[TRACEPARENT])
                if caller is not None:  # not sampled here: join the caller's trace
                    trace_id, span_id = f"{caller[0]:032x}", f"{caller[1]:016x}"
            access_log.offer(record.access_line(trace_id, span_id, time.time()))

    def _finish_ok(self) -> None:
        conn, self.upstream = self.upstream, None
        self.parser = None
        if conn is not None:
            if self.upstream_keep:
                self.plane.pool.release(conn, self.plane.now)
            else:
                conn.sink = None
                conn.close()
        self._complete()

    def _respond_error(self, err: GatewayError) -> None:
        """Answer the client with the gateway's own error (nothing relayed yet)."""
        self.phase = DONE
        if self.charge is not None:
            self._settle(False)
        route = self.decision.route
        route.counters.errors_by_code[err.code] = route.counters.errors_by_code.get(err.code, 0) + 1
        if self.series is not None:
            self.series.by_class[err.status // 100] += 1
        extra = self.variant.header_lines[self.ep_index] if self.attempts else b""
        if self.tracked:
            extra += self.feedback_line
        if self.refusal:
            extra += self.refusal
        if self.trace is not None or self.plane.access_log is not None:
            self._report(err, "")
        self.client.respond_error(err, self.style, extra=extra)

    def _cut_client(self, err: GatewayError) -> None:
        """End a response already under way so the client cannot mistake it as complete."""
        self.phase = DONE
        if self.charge is not None:
            self._settle(True)
        route = self.decision.route
        route.counters.errors_by_code["stream_cut"] = (
            route.counters.errors_by_code.get("stream_cut", 0) + 1
        )
        if self.series is not None:
            self.series.by_class[5] += 1
        if self.trace is not None or self.plane.access_log is not None:
            self._report(None, err.code)
        tail = self.style.stream_error(err, sse=self.sse) if self.chunked_out else b""
        if tail:
            self.out.append(b"%x\r\n%s\r\n" % (len(tail), tail))
        if self.out:
            self._flush()
        self.client.close_now()

    # Timeouts -----------------------------------------------------------------------

    def on_deadline(self, now: float) -> None:
        """Called by the data plane's tick once `deadline` has passed."""
        if self.phase == DONE:
            self.deadline = float("inf")
            return
        if self.phase == QUEUED:  # the queue timeout (or the total one) passed waiting
            waiter = self.waiter
            self.deadline = float("inf")
            if waiter is not None and waiter.queue is not None:
                waiter.queue.expire(waiter, now)
            return
        timeouts = self.decision.route.timeouts
        if now >= self.total_deadline:
            self._timed_out(f"the route's total timeout of {timeouts.total:g}s")
        elif self.phase <= WAITING:  # no response head yet
            if self.upstream is not None and now >= self.first_byte_deadline:
                self._timed_out(f"no response head within first_byte={timeouts.first_byte:g}s")
            else:  # still connecting: the connect timeout governs that part
                self.deadline = min(now + timeouts.first_byte, self.total_deadline)
        else:
            idle_deadline = self.last_activity + timeouts.idle
            if now >= idle_deadline:
                self._timed_out(f"the stream was silent longer than idle={timeouts.idle:g}s")
            else:
                self.deadline = min(idle_deadline, self.total_deadline)

    def _timed_out(self, why: str) -> None:
        self.deadline = float("inf")
        self._attempt_failed(UpstreamTimeout(f"backend {self._backend()}: {why}"))

    def _backend(self) -> str:
        return self.endpoint.backend if self.endpoint is not None else "?"


def rewrite_model(body: bytes, model: str) -> bytes:
    """The body with `model` replaced by the backend's name for it (the front parsed it:
    a JSON object)."""
    parsed = orjson.loads(body)
    parsed["model"] = model
    return orjson.dumps(parsed)


def _count_after(data: bytes, key: bytes, other: bytes, start: int = 0) -> int:
    """The integer after `key` (or else `other`) and a colon in JSON text, searched for
    from `start`; -1 if none."""
    at = data.find(key, start)
    if at < 0:
        at = data.find(other, start)
        if at < 0:
            return -1
        at += len(other)
    else:
        at += len(key)
    n = len(data)
    # Byte by byte, compared as ints and the digits summed here: compiled, a frozenset
    # test and int() of a slice per response measured ~3k instructions more.
    while at < n and _json_space(data[at]):
        at += 1
    if at >= n or data[at] != 58:  # ":"
        return -1
    at += 1
    while at < n and _json_space(data[at]):
        at += 1
    start = at
    count = 0
    while at < n and 48 <= data[at] <= 57:  # "0".."9"
        count = count * 10 + data[at] - 48
        at += 1
    return count if at > start else -1


def _usage_object(data: bytes) -> int:
    """Where the last `"usage"` key of `data` is, if its value is an object; else -1.

    A streamed chunk's `"usage": null` is not a report: taken for one, every chunk of a
    stream paid two count scans and an event search (~1.5 us per chunk compiled)."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return -1
    i = at + 7
    n = len(data)
    while i < n and _json_space(data[i]):
        i += 1
    if i >= n or data[i] != 58:  # ":"
        return -1
    i += 1
    while i < n and _json_space(data[i]):
        i += 1
    return at if i < n and data[i] == 123 else -1  # "{"


def _json_space(c: int) -> bool:
    return c == 32 or c == 10 or c == 13 or c == 9


def _without_usage_event(data: bytes, at: int) -> bytes:
    """`data` minus the SSE usage event (`"choices":[]` with the `"usage"` object at
    `at`), if whole in it. Found from the report itself, not the first `"usage"`: a read
    holding several events also holds their `"usage": null`."""
    start = data.rfind(b"data:", 0, at)
    end = data.find(b"\n\n", at)
    if start < 0 or end < 0 or (start > 0 and data[start - 1 : start] != b"\n"):
        return data
    if b'"choices":[]' not in data[start:end]:
        return data
    return data[:start] + data[end + 2 :]


_NONE: frozenset[bytes] = frozenset()


def scan_head(block: bytes) -> tuple[bytes, bool, bytes, bool]:
    """A backend's response header block (its lines, each ending in CRLF) as the client
    gets it, minus hop-by-hop and internal fields; and what framing needs: whether a
    Content-Length frames the body, the first Content-Type's value (lower-cased) and
    whether the first Transfer-Encoding says chunked (which frames it too).

    One pass over the lines, dispatched on their first letter, so the usual head (a
    server, a date, a type, a length and `Connection: keep-alive`) costs a lower-case
    split and two slices: a search of the whole head per field, and two regex scans, measured ~10k
    instructions per response. A Connection that names other fields takes the general
    path (`_without_dropped`), which drops those too.
    """
    low = block.lower().split(b"\r\n")
    parts: list[bytes] | None = None  # None while nothing is dropped
    run = pos = 0  # the kept run starts at `run`; the line at `pos` (same in both)
    framed = chunked = nominates = False
    ctype = te = b""
    for i in range(len(low) - 1):  # the last item is what follows the final CRLF: b""
        line = low[i]
        end = pos + len(line) + 2
        drop = False
        first = line[0] if line else 0
        if first == 99:  # c
            if line.startswith(b"content-length:"):
                framed = True
            elif line.startswith(b"content-type:"):
                if not ctype:
                    ctype = line[13:].lstrip()
            elif line.startswith(b"connection:"):
                drop = True
                value = line[11:]
                if value != b" keep-alive" and value.strip() not in wire.PLAIN_CONNECTION:
                    nominates = True
        elif first == 116:  # t
            if line.startswith(b"transfer-encoding:"):
                drop = True
                if not te:
                    te = line
                    chunked = b"chunked" in line
            elif line.startswith(b"te:") or line.startswith(b"trailer:"):
                drop = True
        elif first == 107:  # k
            drop = line.startswith(b"keep-alive:")
        elif first == 112:  # p
            drop = line.startswith(b"proxy-connection:") or line.startswith(b"proxy-authenticate:")
        elif first == 117:  # u
            drop = line.startswith(b"upgrade:")
        elif first == 120:  # x
            drop = line.startswith(b"x-request-id:") or _internal(line)
        if drop:  # cut as slices of the original: its case and bytes go on unchanged
            if parts is None:
                parts = []
            if pos > run:
                parts.append(block[run:pos])
            run = end
        pos = end
    if nominates:
        probe = b"\n" + block.lower()
        found = _DROPPED_RESPONSE_HEADER.search(probe)
        if found is not None:
            block = _without_dropped(block, probe, found.start())
    elif parts is not None:
        if run < len(block):
            parts.append(block[run:])
        block = parts[0] if len(parts) == 1 else b"".join(parts)
    return block, framed or chunked, ctype, chunked


def _internal(line: bytes) -> bool:
    """Whether a lower-cased header line is an x-switchyard- field (the gateway's own
    vocabulary: a backend's never reach the client)."""
    if not line.startswith(wire.INTERNAL_PREFIX):
        return False
    colon = line.find(b":")
    return colon > 0 and _INTERNAL_NAME.fullmatch(line, 13, colon) is not None


def _without_dropped(block: bytes, probe: bytes, first: int) -> bytes:
    """The header block minus hop-by-hop and internal fields; the first starts at
    `first` (an index valid in both `block` and `probe`, see on_headers_complete)."""
    end = block.find(b"\r\n", first) + 2
    if (
        probe.startswith(b"\nconnection:", first)
        and probe[first + 12 : end].strip() in wire.PLAIN_CONNECTION
        and _DROPPED_RESPONSE_HEADER.search(probe, end) is None
    ):
        # Nearly every backend response: `Connection: keep-alive` and nothing else to
        # drop. One cut; the general path below measured ~3 us per response.
        return block[:first] + block[end:]
    kept: list[bytes] = []
    pos = 0
    for m in _DROPPED_RESPONSE_HEADER.finditer(probe):
        at = m.start()
        kept.append(block[pos:at])
        pos = block.find(b"\r\n", at) + 2
    kept.append(block[pos:])
    block = b"".join(kept)
    named = _nominated(probe)
    if named:  # fields the backend's Connection header names are hop-by-hop too
        block = b"".join(
            line + b"\r\n"
            for line in block.split(b"\r\n")[:-1]
            if line.split(b":", 1)[0].strip().lower() not in named
        )
    return block


def _nominated(probe: bytes) -> frozenset[bytes]:
    """Field names the Connection lines of a lower-cased head list, besides keep-alive
    and close (RFC 9110 7.6.1); rare, so looked for only when a Connection line exists."""
    at = probe.find(b"\nconnection:")
    end = probe.find(b"\n", at + 1)
    plain = probe[at + 12 : end].strip() in wire.PLAIN_CONNECTION
    if plain and probe.find(b"\nconnection:", end) < 0:
        return _NONE  # the usual `Connection: keep-alive`: nothing more to drop
    names: set[bytes] = set()
    while at >= 0:
        end = probe.find(b"\n", at + 1)
        names.update(t.strip() for t in probe[at + 12 : end if end >= 0 else None].split(b","))
        at = probe.find(b"\nconnection:", at + 1)
    return frozenset(names - {b"", b"keep-alive", b"close"})


def _forward_headers(request: wire.Request) -> bytes:
    """The client's headers as they go upstream, plus the request id."""
    return b"".join((request.forward, b"x-request-id: ", request.request_id, b"\r\n"))
