"""One HTTP/1.1 client connection of a simulator: an asyncio Protocol on httptools.

Fast enough to never be the bottleneck of a load test: a plain response costs a few
parser callbacks, the handler, and one `write`; no task per request unless the handler
asks for one (`Deferred`). Keep-alive, pipelining (answered strictly in order, one
exchange at a time), Content-Length and chunked request bodies, `Expect: 100-continue`
and `Connection: close` are handled here, once, for every simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from typing import Final, cast

import httptools
import orjson

from gateway.simulate.control import control_response
from gateway.simulate.exchange import (
    LAST_CHUNK,
    Deferred,
    Handler,
    Headers,
    Request,
    Responder,
    Response,
    frame_chunk,
    status_line,
)
from gateway.simulate.faults import FaultInjector
from gateway.simulate.stats import Outcome, SimStats

_log = logging.getLogger(__name__)

# Pipelined requests waiting behind a slow response; beyond this we stop reading so a
# client cannot queue unbounded work on one connection.
_QUEUE_HIGH: Final = 64
_QUEUE_LOW: Final = 16
_MAX_BODY: Final = 64 * 1024 * 1024


class ServerState:
    """Per-server state every connection shares: the handler, counters, live tasks."""

    __slots__ = (
        "connections",
        "faults",
        "handler",
        "loop",
        "name",
        "name_header",
        "stats",
        "tasks",
    )

    def __init__(self, handler: Handler, stats: SimStats, faults: FaultInjector) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.stats = stats
        self.faults = faults
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.name = ""
        self.name_header = b""

    def set_name(self, name: str) -> None:
        """Set the name every response carries in `x-sim-name`."""
        if any(c in name for c in "\r\n\0"):
            raise ValueError(f"invalid simulator name {name!r}")
        self.name = name
        self.name_header = b"x-sim-name: " + name.encode("latin-1") + b"\r\n"


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, answer in order, count, and notice disconnects."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: deque[Request] = deque()
        self._current: Request | None = None
        self._key = ""  # stats key of the current exchange
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._close_after_current = False
        self._advancing = False
        self._reading_paused = False
        self._writing_paused = False
        self._writable: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return  # we are hanging up; requests sent after that are not answered
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # We speak HTTP/1.1 only: the offering request is answered (it was dispatched
            # when complete), then we hang up, as the parser accepts nothing after it.
            if self._current is None and not self._queue:
                self._closed = True
                self._transport_or_fail().close()
            else:
                self._close_after_current = True
        except httptools.HttpParserError:
            self._queue.clear()
            if self._current is None:
                self._fail(400, b"malformed HTTP request")
            else:
                self._close_after_current = True
        except _BodyTooLarge:
            self._queue.clear()
            if self._current is None:
                self._fail(413, b"request body too large")
            else:
                self._close_after_current = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._state.connections.discard(self)
        self._queue.clear()
        if self._current is not None:
            # The client left before the response finished: stop producing it.
            if self._timer is not None:
                self._timer.cancel()
            if self._task is not None:
                self._task.cancel()
            self._end_exchange("cancelled")
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        expect = self._headers.get("expect")
        idle = self._current is None and not self._queue
        if expect is not None and expect.lower() == "100-continue" and idle:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > _MAX_BODY:
            raise _BodyTooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        path, _, query = self._url.partition(b"?")
        parts = self._body
        request = Request(
            parser.get_method().decode("ascii"),
            path.decode("latin-1"),
            query,
            self._headers,
            parts[0] if len(parts) == 1 else b"".join(parts),
            parser.should_keep_alive(),
            parser.get_http_version(),
        )
        if self._current is None and not self._queue:
            self._dispatch(request)
        else:
            self._queue.append(request)
            if len(self._queue) >= _QUEUE_HIGH and not self._reading_paused:
                self._reading_paused = True
                self._transport_or_fail().pause_reading()

    # -- Sink (used by Responder) ------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The transport is gone or closing."""
        return self._closed

    @property
    def writing_paused(self) -> bool:
        """The transport's write buffer is above its high-water mark."""
        return self._writing_paused

    def head(
        self,
        status: int,
        content_type: bytes,
        headers: Headers,
        length: int | None,
        close: bool,
        chunked: bool = False,
    ) -> bytes:
        """Status line and headers, ending with the blank line."""
        parts = [status_line(status)]
        if content_type:
            parts += (b"content-type: ", content_type, b"\r\n")
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        parts.append(self._state.name_header)
        if close:
            parts.append(b"connection: close\r\n")
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def write(self, data: bytes) -> None:
        """Write to the client unless it is gone."""
        if not self._closed:
            self._transport_or_fail().write(data)

    async def wait_writable(self) -> None:
        """Wait until the transport drains below its low-water mark."""
        if not self._writing_paused or self._closed:
            return
        if self._writable is None:
            self._writable = self._state.loop.create_future()
        await self._writable

    def complete(self, outcome: Outcome, close: bool = False) -> None:
        """End the current exchange; hang up or move on to the next pipelined request."""
        request = self._current
        if request is None:
            return
        self._end_exchange(outcome)
        if close or outcome != "completed" or not request.keep_alive or self._close_after_current:
            self._queue.clear()
            self._closed = True
            self._transport_or_fail().close()  # flushes what was written, then FIN
            return
        if not self._advancing:
            self._advance()

    # -- internals ---------------------------------------------------------------------

    def reset(self) -> None:
        """End the current exchange as aborted and reset the connection (SO_LINGER 0:
        the peer sees ECONNRESET, not an orderly close)."""
        transport = self._transport_or_fail()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if self._current is not None:
            self._end_exchange("aborted")
        self._queue.clear()
        self._closed = True
        transport.abort()

    def _transport_or_fail(self) -> asyncio.Transport:
        if self._transport is None:
            raise RuntimeError("connection not made")
        return self._transport

    def _dispatch(self, request: Request) -> None:
        state = self._state
        self._current = request
        try:
            if request.path.startswith("/sim/"):
                # Not counted: tests read and reset the counters without disturbing them.
                self._key = ""
                result: Response | Deferred = control_response(request, state.stats, state.faults)
            else:
                self._key = state.stats.begin(request.path)
                state.stats.saw_headers(request.path, request.headers)
                result = state.handler(request)
        except Exception:
            _log.exception("simulator handler failed on %r", request)
            result = Response(500, orjson.dumps({"error": "simulator handler failed"}))
        if isinstance(result, Response):
            if result.delay > 0:
                self._timer = state.loop.call_later(result.delay, self._send_delayed, result)
            else:
                self.send(result)
            return
        task = state.loop.create_task(self._run(result, Responder(self, request)))
        self._task = task
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def send(self, response: Response) -> None:
        """Write a complete response to the current request and complete the exchange."""
        request = self._current
        if request is None:
            return
        close = not request.keep_alive or self._close_after_current
        status, content_type, headers = response.status, response.content_type, response.headers
        chunks = response.chunks
        if chunks is None:
            body = response.body
            data = self.head(status, content_type, headers, len(body), close) + body
        elif request.http_version == "1.0":
            # No chunked encoding in HTTP/1.0: the body ends when the connection does.
            close = True
            data = self.head(status, content_type, headers, None, close) + b"".join(chunks)
        else:
            framed = b"".join([frame_chunk(chunk) for chunk in chunks if chunk])
            head = self.head(status, content_type, headers, None, close, chunked=True)
            data = head + framed + LAST_CHUNK
        self.write(data)
        self.complete("completed", close)

    def _send_delayed(self, response: Response) -> None:
        self._timer = None
        self.send(response)

    async def _run(self, deferred: Deferred, responder: Responder) -> None:
        try:
            await deferred(responder)
        except Exception:
            _log.exception("simulator handler failed on %r", responder.request)
            if not responder.started:
                responder.send(Response(500, orjson.dumps({"error": "simulator handler failed"})))
            responder.close_connection()
        if not responder.done:
            _log.error("handler returned without finishing %r", responder.request)
            responder.close_connection()

    def _end_exchange(self, outcome: Outcome) -> None:
        if self._key:
            self._state.stats.end(self._key, outcome)
        self._current = None
        self._timer = None
        self._task = None

    def _advance(self) -> None:
        # Iterative, not recursive: answers to a burst of pipelined requests that complete
        # synchronously must not grow the stack (`complete` skips `_advance` meanwhile).
        self._advancing = True
        try:
            while self._current is None and self._queue and not self._closed:
                self._dispatch(self._queue.popleft())
        finally:
            self._advancing = False
        if self._reading_paused and len(self._queue) <= _QUEUE_LOW and not self._closed:
            self._reading_paused = False
            self._transport_or_fail().resume_reading()

    def _fail(self, status: int, message: bytes) -> None:
        body = orjson.dumps({"error": message.decode()})
        self.write(self.head(status, b"application/json", (), len(body), True) + body)
        self._closed = True
        self._transport_or_fail().close()

    def shutdown(self) -> None:
        """Close the connection now (server shutdown); in-flight work is cancelled."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class _BodyTooLarge(Exception):
    """Raised from `on_body` to stop parsing an oversized request."""
