"""The client-facing HTTP/1.1 server: one asyncio Protocol per client connection.

Modelled on uvicorn's httptools protocol, minus ASGI: requests are parsed with llhttp,
bodies buffered up to a limit (routing needs the body, retries need it again), and
handed to the data plane. Pipelined requests are answered strictly in order: while one
is served the next wait in a bounded queue, and reading pauses when it is full.

Timeouts cost the hot path one float store: each connection (and its exchange) keeps
a deadline, and the data plane's ~10 Hz tick closes whatever is past due. A timer per
request measured ~2 us; the tick's precision (0.1 s) is ample for these limits.

The server knows nothing above it: it calls the two small base classes defined here,
`RequestHandler` (the data plane implements it) and `ResponseSource` (the exchange
does). Native base classes, not Protocols: compiled, these calls are vtable calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from time import monotonic, perf_counter
from typing import Final

import httptools

from gateway.dataplane.http import wire
from gateway.dataplane.shared import SharedState
from gateway.dataplane.styles import ErrorStyle
from gateway.errors import (
    BadRequest,
    ExpectationFailed,
    GatewayError,
    HeadersTooLarge,
    InternalError,
    PayloadTooLarge,
    RequestTimeout,
    UriTooLong,
)

log = logging.getLogger("switchyard.server")

_IDLE, _HEAD, _BODY, _BUSY = range(4)
# The lower-case form of the header names most requests carry, as clients spell them:
# a dict lookup per header instead of a bytes.lower() call (about a tenth of the
# instructions, compiled); any other name is lower-cased as it comes.
_COMMON_NAMES = (
    b"host",
    b"content-type",
    b"content-length",
    b"authorization",
    b"accept",
    b"accept-encoding",
    b"user-agent",
    b"connection",
    b"x-request-id",
    b"x-api-key",
    b"x-user-id",
    b"traceparent",
    b"tracestate",
    b"expect",
    b"transfer-encoding",
)
_LOWER_NAMES: dict[bytes, bytes] = {
    spelling: name
    for name in _COMMON_NAMES
    for spelling in (name, name.title(), name.upper(), name.capitalize())
}
# Read per header: this module's constants (compiled, a static read), where `wire.X`
# is a module attribute lookup each time (~17 a request measured ~4k instructions).
_HOP_BY_HOP: Final = wire.HOP_BY_HOP_REQUEST
_INTERNAL_PREFIX: Final = wire.INTERNAL_PREFIX
_REQUEST_ID_OK = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class RequestHandler(SharedState):
    """What the connections hand their requests to: the data plane implements it.

    The process's shared state (the clock the connections refresh, the settings they
    read) plus the three calls a connection makes upwards.
    """

    def handle(self, conn: ClientConnection, request: wire.Request) -> None:
        """Serve `request`: answer it with `conn.respond`, or `conn.start_exchange`."""
        raise NotImplementedError

    def connection_opened(self, conn: ClientConnection) -> None:
        raise NotImplementedError

    def connection_closed(self, conn: ClientConnection) -> None:
        raise NotImplementedError


class ResponseSource:
    """What answers a request from elsewhere (the exchange, from a backend): the
    connection starts it and passes on the client's flow control and departure; the
    data plane's tick calls `on_deadline` once `deadline` has passed."""

    # Set by the subclass (a class default of float("inf") would be computed again for
    # every instance, compiled).
    deadline: float

    def start(self) -> None:
        raise NotImplementedError

    def client_paused(self, paused: bool) -> None:
        """The client cannot take more (True) or can again (False)."""
        raise NotImplementedError

    def client_gone(self) -> None:
        """The client closed its connection before the response was complete."""
        raise NotImplementedError

    def leaves_on_eof(self) -> bool:
        """Whether the client's end of input means it is gone: true while nothing was
        sent for it yet (an exchange waiting in a flow queue), as nginx takes a read of
        0 bytes before the upstream answers for a client that closed."""
        return False

    def on_deadline(self, now: float) -> None:
        raise NotImplementedError


class ClientConnection:
    """Parses requests from one client and writes the responses back, in order.

    An asyncio protocol by its methods, not by inheritance: compiled, a subclass of
    asyncio.Protocol (an interpreted class) would keep its attributes in a dict, and
    this object's attributes are read and written a few dozen times per request.
    """

    def __init__(self, plane: RequestHandler) -> None:
        self.plane = plane
        self.limits = plane.settings.limits
        self.loop = plane.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.exchange: ResponseSource | None = None
        self.pending: deque[wire.Request] = deque()
        self.closing = False
        self.closing_after = False  # client half-closed: finish in-flight work, then close
        self.current: wire.Request | None = None
        self._advancing = False  # inside _serve_pending's loop
        self.read_paused_by: set[str] = set()
        self.write_paused = False
        # Per-message parse state.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._forward: list[bytes] = []
        self._fields: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._request_id = b""
        self._plain_11 = False  # this message has no Connection field (on_headers_complete)
        self._max_header_bytes = self.limits.max_header_bytes
        self._max_headers = self.limits.max_header_count
        self._header_timeout = self.limits.header_timeout
        self._keepalive_timeout = self.limits.keepalive_timeout
        # Read per request: plain ints here, not attribute reads on the settings model.
        self._max_body_bytes = self.limits.max_body_bytes
        self._body_timeout = self.limits.body_timeout
        self._max_pipelined = self.limits.max_pipelined
        # Timeouts, checked by DataPlane's tick.
        self._state = _IDLE
        self.deadline = float("inf")

    # Connection lifecycle -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.plane.connection_opened(self)
        self._set_deadline(_IDLE, self.limits.keepalive_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.plane.connection_closed(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_gone()
        self.pending.clear()

    def eof_received(self) -> bool | None:
        # A half-close from the client means no more requests; an in-flight response
        # is still delivered (keep the transport open until it is written).
        if self.exchange is None and not self.pending:
            return False
        if self.exchange is not None and self.exchange.leaves_on_eof():
            return False  # the transport closes: connection_lost tells the exchange
        self.closing_after = True
        return True

    def data_received(self, data: bytes) -> None:
        self.plane.now = monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(BadRequest("protocol upgrades are not supported by this gateway"))
            return
        except httptools.HttpParserCallbackError as exc:
            # Our own callbacks raise GatewayError for limits and framing; anything else
            # is a gateway bug and must not be reported as the client's fault.
            cause = exc.__context__
            if isinstance(cause, GatewayError):
                self._reject(cause)
            else:
                log.error("request parsing failed", exc_info=cause)
                self._reject(InternalError("internal error while reading the request"))
            return
        except httptools.HttpParserError as exc:
            self._reject(BadRequest(f"malformed HTTP request: {_parser_message(exc)}"))
            return
        pending = self.pending
        if self.exchange is None and pending and self.current is None:
            if len(pending) == 1 and not self.read_paused_by:
                # The common case, one request per read: nothing queued behind it can
                # recurse, so skip the loop's bookkeeping (a microsecond per request).
                self._serve(pending.popleft())
            else:
                self._serve_pending()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.client_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.client_paused(False)

    # httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._forward = []
        self._header_bytes = 0
        self._body = []
        self._body_len = 0
        self._request_id = b""
        self._set_deadline(_HEAD, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._max_header_bytes:
            raise UriTooLong(
                f"request target exceeds the {self._max_header_bytes}-byte header limit"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept minimal (it runs per header); the interesting fields are looked up once
        # in on_headers_complete. llhttp itself rejects the request-smuggling framings:
        # Content-Length with Transfer-Encoding, duplicate Content-Length, obs-fold.
        headers = self._headers
        low = _LOWER_NAMES.get(name)
        name = low if low is not None else name.lower()
        headers.append((name, value))
        if name not in _HOP_BY_HOP and not name.startswith(_INTERNAL_PREFIX):
            self._forward += (name, b": ", value, b"\r\n")  # joined once, upstream-bound
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self._max_header_bytes or len(headers) > self._max_headers:
            raise HeadersTooLarge(
                f"request headers exceed the limits ({self.limits.max_header_count} fields, "
                f"{self.limits.max_header_bytes} bytes)"
            )

    def on_headers_complete(self) -> None:
        headers = self._headers
        fields = self._fields = dict(headers)
        if b"host" not in fields or len(fields) != len(headers):
            # Rare (no Host, or some field repeated): the one dict lookup and length
            # compare above are all a well-formed request pays for the Host rule.
            self._check_host()
        length = fields.get(b"content-length")
        if length is not None and int(length) > self._max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {int(length)} bytes exceeds the limit of "
                f"{self.limits.max_body_bytes} bytes"
            )
        self._request_id = fields.get(b"x-request-id", b"")
        connection = fields.get(b"connection")
        self._plain_11 = connection is None
        if connection is not None and connection.lower() not in wire.PLAIN_CONNECTION:
            self._drop_nominated()
        self._set_deadline(_BODY, self._body_timeout)
        expect = fields.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise ExpectationFailed("only 'Expect: 100-continue' is supported")
            if self.transport is not None and not self.closing:
                self.transport.write(wire.CONTINUE_100)

    def _check_host(self) -> None:
        # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host and
        # to any request with more than one. Routing never reads Host, but a proxy in
        # front of or behind the gateway may, and two readers picking different Hosts is
        # a request-smuggling and cache-poisoning vector (nginx refuses both too).
        count = 0
        for name, _ in self._headers:
            if name == b"host":
                count += 1
        if count > 1:
            raise BadRequest(
                f"the request has {count} Host header fields; HTTP allows exactly one "
                "(RFC 9112 section 3.2)"
            )
        if count == 0 and self.parser.get_http_version() != "1.0":
            raise BadRequest(
                "the HTTP/1.1 request has no Host header field; HTTP/1.1 requires one "
                "(RFC 9112 section 3.2), e.g. 'Host: gateway.example'"
            )

    def _drop_nominated(self) -> None:
        # RFC 9110 7.6.1: fields a Connection header names are hop-by-hop too, so they
        # do not go upstream (rare: rebuilt only when Connection names more than
        # keep-alive or close).
        named = {
            token.strip().lower()
            for name, value in self._headers
            if name == b"connection"
            for token in value.split(b",")
        }
        self._forward = [
            part
            for name, value in self._headers
            if name not in wire.HOP_BY_HOP_REQUEST
            and name not in named
            and not name.startswith(wire.INTERNAL_PREFIX)
            for part in (name, b": ", value, b"\r\n")
        ]

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._max_body_bytes:
            raise PayloadTooLarge(
                f"request body exceeds the limit of {self.limits.max_body_bytes} bytes"
            )
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        url = self._url
        if url[:1] != b"/":
            url = _origin_form(url)
        q = url.find(b"?")
        path, query = (url, b"") if q < 0 else (url[:q], url[q:])
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        rid = self._request_id
        minted = not rid or len(rid) > 128 or not _REQUEST_ID_OK.issuperset(rid)
        if minted:
            rid = self.plane.new_request_id()  # a client id we cannot trust is replaced
        keep_alive = parser.should_keep_alive()
        request = wire.Request(
            method=parser.get_method(),
            path=path,
            query=query,
            headers=self._headers,
            body=body,
            keep_alive=keep_alive,
            # Kept alive with no Connection field can only be HTTP/1.1 (1.0 needs an
            # explicit keep-alive): the version string, which httptools formats per
            # call (~2k instructions), is asked for only otherwise.
            http_11=(keep_alive and self._plain_11) or parser.get_http_version() == "1.1",
            received_at=perf_counter(),
            request_id=rid,
            fields=self._fields,
            forward=b"".join(self._forward),
            minted=minted,
        )
        # Served after feed_data returns (see data_received), never inside the parser's
        # callback, so routing errors are not mistaken for parse errors.
        self.pending.append(request)
        if len(self.pending) >= self._max_pipelined:
            self.pause_reading("pipeline")

    # Serving ------------------------------------------------------------------------

    def _serve(self, request: wire.Request) -> None:
        self._state = _BUSY
        self.deadline = float("inf")
        self.current = request
        self.plane.handle(self, request)

    def _serve_pending(self) -> None:
        # A loop, not recursion: a request answered locally (GET /v1/models, a 4xx)
        # completes inside `_serve` and calls back into exchange_done, which would
        # serve the next one from there; a pipelining flood then overflowed the stack.
        if self._advancing:
            return  # called back from inside the loop below: it takes the next one
        self._advancing = True
        try:
            pending = self.pending
            while pending and self.current is None and not self.closing:
                request = pending.popleft()
                if "pipeline" in self.read_paused_by and len(pending) < self.limits.max_pipelined:
                    self.resume_reading("pipeline")
                self._serve(request)
        finally:
            self._advancing = False

    def start_exchange(self, exchange: ResponseSource) -> None:
        self.exchange = exchange
        if self.write_paused:
            exchange.client_paused(True)
        exchange.start()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    def exchange_done(self, keep_alive: bool) -> None:
        """The current response is fully written: go on to the next request or close."""
        self.exchange = None
        self.current = None
        if not keep_alive or self.plane.draining or (self.closing_after and not self.pending):
            self.close_after_write()
            return
        if self.pending:
            self._serve_pending()
            return
        if self.closing_after:
            self.close_after_write()
            return
        self._state = _IDLE  # _set_deadline, inlined: once per request
        self.deadline = self.plane.now + self._keepalive_timeout

    def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: bytes = b"application/json",
        extra: bytes = b"",
    ) -> None:
        """Answer the current request locally (no backend), then continue."""
        request = self.current
        keep_alive = request.keep_alive if request is not None else False
        data = wire.local_response(
            status,
            body,
            content_type=content_type,
            request_id=request.request_id if request is not None else b"",
            keep_alive=keep_alive,
            extra=extra,
        )
        if request is not None and request.method == b"HEAD" and body:
            # RFC 9110 9.3.2: the head only (its content-length still tells the size); a
            # body here would be read as the start of the next response on the connection.
            data = data[: -len(body)]
        self.write(data)
        self.exchange_done(keep_alive)

    def respond_error(self, err: GatewayError, style: ErrorStyle, *, extra: bytes = b"") -> None:
        self.respond(err.status, style.body(err), content_type=style.content_type, extra=extra)

    def _reject(self, err: GatewayError) -> None:
        """A request we cannot parse or accept: answer it and close (framing is unknown)."""
        if self.closing:
            return
        self.plane.metrics.bad_request += 1
        self.pending.clear()
        if self.exchange is not None or self.current is not None:
            # A response is under way on this connection; we cannot answer out of order.
            self.close_now()
            return
        self.write(
            wire.local_response(
                err.status,
                self.plane.default_style.body(err),
                content_type=self.plane.default_style.content_type,
                keep_alive=False,
            )
        )
        self.close_after_write()

    def close_after_write(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def close_now(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # Flow control -------------------------------------------------------------------

    def pause_reading(self, why: str) -> None:
        if not self.read_paused_by and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.read_paused_by.add(why)

    def resume_reading(self, why: str) -> None:
        self.read_paused_by.discard(why)
        if not self.read_paused_by and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def pause_reading_for_upstream(self, paused: bool) -> None:
        if paused:
            self.pause_reading("upstream")
        else:
            self.resume_reading("upstream")

    # Timeouts -----------------------------------------------------------------------

    def _set_deadline(self, state: int, seconds: float) -> None:
        self._state = state
        self.deadline = self.plane.now + seconds

    def on_deadline(self) -> None:
        """Called by the data plane's tick once `deadline` has passed."""
        self.deadline = float("inf")
        if self.closing or self._state == _BUSY:
            return  # a request in service is timed by its exchange
        if self._state == _IDLE:
            self.close_after_write()
        else:
            what = "headers" if self._state == _HEAD else "body"
            self._reject(RequestTimeout(f"request {what} not received in time"))


def _origin_form(url: bytes) -> bytes:
    """The path of an absolute-form target (RFC 9112 3.2.2: a server must accept it).

    Only the path is kept: the authority never chooses an upstream, so a client cannot
    point the gateway anywhere with `GET http://elsewhere/...`. Other forms (`*`,
    authority-form) stay as they are and find no front (404).
    """
    lowered = url[:8].lower()
    if not (lowered.startswith(b"http://") or lowered.startswith(b"https://")):
        return url
    start = url.find(b"//") + 2
    ends = [i for i in (url.find(b"/", start), url.find(b"?", start)) if i >= 0]
    if not ends:
        return b"/"
    rest = url[min(ends) :]
    return rest if rest[:1] == b"/" else b"/" + rest


def _parser_message(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
