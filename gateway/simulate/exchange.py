"""The handler interface of the simulator HTTP core: requests in, responses out.

A simulator is a callable `Handler(request) -> Response | Deferred`:

- a `Response` is written in one `write` (after `Response.delay` seconds, on a timer,
  so a slow backend costs no task per request);
- a `Deferred` is a coroutine function given a `Responder`; it can write a full response,
  stream chunks with delays in between, or misbehave on purpose (cut, garbage, hang).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Final, Protocol

from gateway.simulate.stats import Outcome

Headers = tuple[tuple[bytes, bytes], ...]
"""Extra response headers as (name, value) byte pairs, written as given."""

_STATUS_LINES: Final[Mapping[int, bytes]] = MappingProxyType(
    {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
)


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <reason>\\r\\n`, with a placeholder reason for unknown codes."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


class Request:
    """One parsed HTTP request. Header names are lower-case; repeated headers keep the last."""

    __slots__ = ("body", "headers", "http_version", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
        http_version: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"Request({self.method} {self.path}, {len(self.body)} bytes)"


@dataclass(slots=True)
class Response:
    """A complete response, written in one `write` after `delay` seconds.

    With `chunks` the body is those pieces instead, sent with chunked transfer encoding,
    one HTTP chunk each: a stream whose events are all ready at once (no delays) costs
    one write instead of one per event, with the same bytes on the wire.
    """

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: Headers = ()
    delay: float = 0.0
    chunks: list[bytes] | None = None


def frame_chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk: hex size, CRLF, data, CRLF."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


class Sink(Protocol):
    """What a `Responder` needs from the connection that owns it."""

    @property
    def closed(self) -> bool:
        """The transport is gone or closing."""

    @property
    def writing_paused(self) -> bool:
        """The transport asked us to stop writing until its buffer drains."""

    def head(
        self,
        status: int,
        content_type: bytes,
        headers: Headers,
        length: int | None,
        close: bool,
        chunked: bool = False,
    ) -> bytes:
        """Encode a status line and headers; `length` None with `chunked` False means
        the body ends when the connection closes."""

    def write(self, data: bytes) -> None:
        """Write bytes to the client."""

    def send(self, response: Response) -> None:
        """Write a complete response (ignoring its `delay`) and complete the exchange."""

    async def wait_writable(self) -> None:
        """Return once the transport accepts writes again."""

    def complete(self, outcome: Outcome, close: bool = False) -> None:
        """The current exchange ended; close the connection if asked, if the request
        did not allow keep-alive, or if the outcome is not `completed`."""

    def reset(self) -> None:
        """Drop the connection with a TCP reset (a fault); the exchange is aborted."""


class Responder:
    """Writes the response of one deferred exchange.

    Calls after the client went away are ignored: the task running the handler is
    cancelled at its next `await`, so handlers need no liveness checks of their own.
    """

    __slots__ = ("_chunked", "_done", "_request", "_sink", "_started")

    def __init__(self, sink: Sink, request: Request) -> None:
        self._sink = sink
        self._request = request
        self._started = False
        self._done = False
        # HTTP/1.0 has no chunked encoding: such a stream is delimited by closing.
        self._chunked = request.http_version != "1.0"

    @property
    def request(self) -> Request:
        """The request being answered."""
        return self._request

    @property
    def started(self) -> bool:
        """Response headers have been written."""
        return self._started

    @property
    def done(self) -> bool:
        """The exchange is over (answered, cut, or the client left)."""
        return self._done or self._sink.closed

    def send(self, response: Response) -> None:
        """Write a complete response now (its `delay` is ignored here) and finish."""
        if self.done:
            return
        self._check_not_started()
        self._done = True
        self._sink.send(response)

    def send_partial(self, response: Response, body_bytes: int) -> None:
        """Write the headers and the first `body_bytes` of the body, then close (a fault)."""
        if self.done:
            return
        self._check_not_started()
        head = self._sink.head(
            response.status, response.content_type, response.headers, len(response.body), True
        )
        self._sink.write(head + response.body[:body_bytes])
        self._finish("aborted")

    def start(self, status: int, content_type: bytes, headers: Headers = ()) -> None:
        """Write the headers of a streamed response; send the body with `chunk`."""
        if self.done:
            return
        self._check_not_started()
        self._started = True
        close = not (self._chunked and self._request.keep_alive)
        self._sink.write(
            self._sink.head(status, content_type, headers, None, close, chunked=self._chunked)
        )

    def chunk(self, data: bytes) -> None:
        """Write one piece of a streamed body as its own HTTP chunk."""
        if self.done or not data:
            return
        if not self._started:
            raise RuntimeError("chunk() before start()")
        if self._chunked:
            self._sink.write(frame_chunk(data))
        else:
            self._sink.write(data)

    async def drain(self) -> None:
        """Wait while the client reads slower than we write (flow control)."""
        if self._sink.writing_paused and not self.done:
            await self._sink.wait_writable()

    def end(self) -> None:
        """Finish a streamed response (the terminating chunk) and the exchange."""
        if self.done:
            return
        if not self._started:
            raise RuntimeError("end() before start()")
        if self._chunked:
            self._sink.write(LAST_CHUNK)
            self._finish("completed")
        else:
            # Close-delimited body: closing the connection is what ends it.
            self._finish("completed", close=True)

    def write_raw(self, data: bytes) -> None:
        """Write bytes with no HTTP framing at all (for the garbage fault)."""
        if not self.done:
            self._started = True
            self._sink.write(data)

    def close_connection(self) -> None:
        """Close the connection after what was written so far (a fault: cut, garbage)."""
        if not self.done:
            self._finish("aborted")

    def reset_connection(self) -> None:
        """Drop the connection with a TCP reset, unwritten bytes discarded (a fault)."""
        if not self.done:
            self._done = True
            self._sink.reset()

    def _check_not_started(self) -> None:
        if self._started:
            raise RuntimeError("response already started")

    def _finish(self, outcome: Outcome, close: bool = False) -> None:
        self._done = True
        self._sink.complete(outcome, close)


Deferred = Callable[[Responder], Coroutine[Any, Any, None]]
"""A response produced over time by a coroutine, run as a task on the connection."""


class Handler(Protocol):
    """A simulator: maps each request to a response, now or later."""

    def __call__(self, request: Request) -> Response | Deferred:
        """Answer `request`; must not block (use `Response.delay` or a `Deferred`)."""
