"""HTTP/1.1 vocabulary shared by the client-facing server and the upstream client."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

from gateway.dataplane.quota import KeyState

# RFC 9110 7.6.1: hop-by-hop fields never cross a proxy. `host`, `content-length` and
# `expect` are rewritten by the gateway itself, `x-request-id` replaced by ours.
HOP_BY_HOP_REQUEST = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
        b"x-request-id",
    }
)
HOP_BY_HOP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-request-id",
    }
)
# Headers that name the backend's internals; a client never chooses or sees them raw.
INTERNAL_PREFIX = b"x-switchyard-"
# Connection values that nominate no other field (RFC 9110 7.6.1), either direction.
PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})

STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus
}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


# The size lines of the chunks streamed events make (an SSE event is a few hundred
# bytes), built once: a relayed chunk then costs a lookup, not a bytes formatting of
# its size and a copy of its data (~1.5k instructions a chunk, compiled).
_CHUNK_HEADS: Final = tuple(b"%x\r\n" % n for n in range(1024))


def chunk_head(size: int) -> bytes:
    """The size line of a chunk of `size` bytes; the data and a CRLF follow it."""
    return _CHUNK_HEADS[size] if size < 1024 else b"%x\r\n" % size


class Request:
    """A complete client request, body included (bodies are buffered, bounded).

    A plain class with a written-out __init__ (built once per request: mypyc compiles
    it, where a dataclass's generated __init__ stays interpreted, ~6k instructions).
    """

    __slots__ = (
        "body",
        "fields",
        "forward",
        "headers",
        "http_11",
        "keep_alive",
        "key",
        "method",
        "minted",
        "path",
        "query",
        "received_at",
        "request_id",
    )

    def __init__(
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        http_11: bool,
        received_at: float,
        request_id: bytes = b"",
        fields: dict[bytes, bytes] | None = None,
        forward: bytes = b"",
        minted: bool = False,
        key: KeyState | None = None,
    ) -> None:
        self.method = method
        self.path = path  # path only, no query
        self.query = query  # including the leading "?", or b""
        self.headers = headers  # names lower-cased
        self.body = body
        self.keep_alive = keep_alive
        self.http_11 = http_11
        self.received_at = received_at  # time.perf_counter() when the message completed
        self.request_id = request_id
        self.fields = fields  # headers by lower-case name (last wins)
        self.forward = forward  # the header lines that go upstream (hop-by-hop removed)
        # The gateway made `request_id` (the client sent none it could use): on a route
        # that takes feedback, the exchange replaces it with the signed feedback id.
        self.minted = minted
        # The client's API key as checked (--api-keys): name, tenant, priority, quotas.
        self.key = key

    def __repr__(self) -> str:
        return f"Request({self.method!r} {self.path!r}{self.query!r}, id={self.request_id!r})"


def local_response(
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    request_id: bytes = b"",
    keep_alive: bool = True,
    extra: bytes = b"",
) -> bytes:
    """A complete response the gateway answers itself, as one buffer for one write."""
    head = [
        status_line(status),
        b"content-type: ",
        content_type,
        b"\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\n",
    ]
    if request_id:
        head += [b"x-request-id: ", request_id, b"\r\n"]
    if not keep_alive:
        head.append(b"connection: close\r\n")
    head += [extra, b"\r\n", body]
    return b"".join(head)
