"""The Python floor: the least a proxy on this runtime does for the bench's request.

    python loadtests/benchlib/floor.py --port 0 --upstream http://127.0.0.1:PORT

A row of `loadtests/bench` so every table shows how far the gateway's full path is from
what Python itself allows: one process, uvloop, httptools parsing both sides, and only
what a light policy needs per request:

- a sticky two-variant pick (90/10 on a CRC-32 of `x-user-id`, as the bench policy's
  `sticky: {hash_on: header:x-user-id}`), both variants on the same upstream;
- two counters (requests per variant, answers per status class);
- keep-alive connections to the upstream, one per client connection in flight, pooled;
- the answer relayed with its status, content type and body, in one write.

A chunked answer (a token stream, for `loadtests/bench --streaming`) is relayed as it
comes instead: its head at once, then each read of the upstream's bytes as they are,
framing included, in one write per read: the least a streaming relay does.

It is not a proxy to run: no timeouts, no retries, no header forwarding beyond the
body's type. It answers 502 if the upstream fails. What it prints: "floor listening on
http://HOST:PORT", and its counters on SIGTERM.

The same file compiles with mypyc (`loadtests/bench --compiled-floor` builds it into
the bench's temp dir): what compiled code doing this little reaches.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import sys
import zlib
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import uvloop

CHAMPION_SHARE = 90  # of 100 hash buckets
_BAD_BODY = b'{"error":"upstream unavailable"}'
_BAD_GATEWAY = (
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_BAD_BODY)).encode()
    + b"\r\n\r\n"
    + _BAD_BODY
)


class Counters:
    def __init__(self) -> None:
        self.variants = {"champion": 0, "challenger": 0}
        self.classes: collections.Counter[int] = collections.Counter()


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes, bytes | None]] | None = None
        self.content_type = b"application/json"
        self.body: list[bytes] = []
        self.chunked = False
        self.client: asyncio.Transport | None = None  # a stream's client, while relayed
        self.relaying = False
        self.head_left = b""  # a stream's first read: where its body starts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.discard(self)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        streaming = self.relaying
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            if self.transport is not None:
                self.transport.close()
            return
        client = self.client
        if client is not None and self.relaying:
            if not streaming:  # the read that held the head: its body part only
                data = data[data.find(b"\r\n\r\n") + 4 :]
            if data:
                client.write(data)
            if self.waiter is None:  # the stream ended in this read
                self.relaying = False
                self.client = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value
        elif lower == b"transfer-encoding":
            self.chunked = value.lower() == b"chunked"

    def on_headers_complete(self) -> None:
        client = self.client
        if self.chunked and client is not None:
            self.relaying = True
            status = self.parser.get_status_code()
            client.write(
                b"HTTP/1.1 %d \r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
                % (status, self.content_type)
            )

    def on_body(self, body: bytes) -> None:
        if not self.relaying:
            self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        body = None if self.relaying else b"".join(self.body)
        self.body = []
        self.chunked = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, self.content_type, body))
        self.pool.release(self)

    def send(
        self, request: bytes, client: asyncio.Transport | None
    ) -> asyncio.Future[tuple[int, bytes, bytes | None]]:
        """Send `request`; the answer's status, type and body (None: a stream, already
        relayed to `client`)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.client = client
        self.transport.write(request)
        return self.waiter


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[Upstream] = []

    async def acquire(self) -> Upstream:
        if self.idle:
            return self.idle.pop()
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        return protocol

    def release(self, upstream: Upstream) -> None:
        self.idle.append(upstream)

    def discard(self, upstream: Upstream) -> None:
        if upstream in self.idle:
            self.idle.remove(upstream)


class Client(asyncio.Protocol):
    """One client connection: requests in order, answered one after another."""

    def __init__(self, pool: Pool, counters: Counters, host_header: bytes) -> None:
        self.pool = pool
        self.counters = counters
        self.host_header = host_header
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.user = b""
        self.extra = b""
        self.body: list[bytes] = []
        self.queue: collections.deque[tuple[bytes, bytes, bytes, bytes]] = collections.deque()
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 9 and name.lower() == b"x-user-id":
            self.user = value
        elif len(name) == 12 and name.lower() == b"x-sim-tokens":
            self.extra = b"\r\nx-sim-tokens: " + value  # the simulator's stream length

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.queue.append((self.url, self.user, self.extra, b"".join(self.body)))
        self.url, self.user, self.extra, self.body = b"", b"", b"", []
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self.queue:
            url, user, extra, body = self.queue.popleft()
            variant = "champion" if zlib.crc32(user) % 100 < CHAMPION_SHARE else "challenger"
            self.counters.variants[variant] += 1
            answer = await self._forward(url, extra, body)
            if self.transport is None or self.transport.is_closing():
                break
            if answer:  # empty: a stream, relayed as it came
                self.transport.write(answer)
        self.busy = False

    async def _forward(self, url: bytes, extra: bytes, body: bytes) -> bytes:
        request = b"".join(
            (
                b"POST ",
                url,
                b" HTTP/1.1\r\nhost: ",
                self.host_header,
                extra,
                b"\r\ncontent-type: application/json\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )
        try:
            upstream = await self.pool.acquire()
            status, content_type, answer = await upstream.send(request, self.transport)
        except (OSError, ConnectionError, httptools.HttpParserError):
            self.counters.classes[5] += 1
            return _BAD_GATEWAY
        self.counters.classes[status // 100] += 1
        if answer is None:
            return b""
        return b"".join(
            (
                b"HTTP/1.1 ",
                str(status).encode(),
                b" \r\ncontent-type: ",
                content_type,
                b"\r\ncontent-length: ",
                str(len(answer)).encode(),
                b"\r\n\r\n",
                answer,
            )
        )


async def serve(port: int, upstream: str) -> None:
    parts = urlsplit(upstream)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise SystemExit(f"--upstream must be http://HOST:PORT, not {upstream!r}")
    pool = Pool(parts.hostname, parts.port)
    counters = Counters()
    host_header = parts.netloc.encode()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(pool, counters, host_header), "127.0.0.1", port, backlog=1024
    )
    # Any: uvloop's `sockets` is a list where typeshed says tuple, which compiled
    # code would check.
    bound = cast(Any, server).sockets[0].getsockname()[1]
    print(f"floor listening on http://127.0.0.1:{bound}", flush=True)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    await stop
    server.close()
    print(f"floor variants {counters.variants} classes {dict(counters.classes)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    # Not from __doc__: compiled, the module has none.
    parser = argparse.ArgumentParser(description="The Python floor of loadtests/bench.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
