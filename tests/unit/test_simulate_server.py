"""The simulator HTTP core on loopback, spoken to over raw sockets.

Framing, keep-alive, pipelining order, flow control, cancellation and the transport
faults are checked byte by byte, with httptools parsing what comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
import orjson
import pytest

from gateway.simulate import (
    FaultInjector,
    OpenAIOptions,
    Request,
    Responder,
    Response,
    SimServer,
    SimStats,
    serve_openai,
    start_server,
)
from gateway.simulate.exchange import Deferred
from gateway.simulate.faults import GARBAGE

CHAT = b'{"model":"m","messages":[{"role":"user","content":"one two three"}]}'


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "host: sim", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def get(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "host: sim", *headers]) + "\r\n\r\n").encode()


@dataclass
class Parsed:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    chunks: int = 0


class Client:
    """A raw connection that parses HTTP/1.1 responses as they arrive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Parsed] = []
        self.partial = Parsed()
        self.eof = False

    def on_message_begin(self) -> None:
        self.partial = Parsed()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.partial.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.partial.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.partial.body += body

    def on_chunk_header(self) -> None:
        self.partial.chunks += 1

    def on_message_complete(self) -> None:
        self.done.append(self.partial)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def responses(self, count: int, timeout: float = 5.0) -> list[Parsed]:
        """Read until `count` complete responses arrived or the server closed."""
        async with asyncio.timeout(timeout):
            while len(self.done) < count and not self.eof:
                await self.read_some()
        return self.done

    async def read_some(self) -> None:
        data = await self.reader.read(65536)
        if data:
            self.parser.feed_data(data)
        else:
            self.eof = True

    async def until_eof(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.eof:
                await self.read_some()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = await serve_openai(OpenAIOptions(tokens=4), name="unit-sim")
    yield server
    await server.close()


async def open_client(server: SimServer) -> Client:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    return Client(reader, writer)


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_pipelined_requests_answered_in_order(sim: SimServer) -> None:
    client = await open_client(sim)
    await client.send(
        post("/v1/chat/completions", CHAT, "x-sim-latency-ms: 100")
        + get("/v1/models")
        + get("/health", "connection: close")
    )
    first, second, third = await client.responses(3)
    assert orjson.loads(first.body)["object"] == "chat.completion"
    assert orjson.loads(second.body)["object"] == "list"
    assert third.status == 200 and third.headers["connection"] == "close"
    await client.until_eof()  # Connection: close honoured
    assert {r.headers["x-sim-name"] for r in (first, second, third)} == {"unit-sim"}
    await client.close()
    assert sim.stats.completed == 3


async def test_keep_alive_serves_many_requests(sim: SimServer) -> None:
    client = await open_client(sim)
    for i in range(5):
        await client.send(post("/v1/chat/completions", CHAT))
        responses = await client.responses(i + 1)
        assert responses[-1].status == 200
    assert not client.eof
    await client.close()


async def test_chunked_request_body(sim: SimServer) -> None:
    client = await open_client(sim)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\ntransfer-encoding: chunked\r\n\r\n"
    await client.send(head)
    for piece in (CHAT[:10], CHAT[10:30], CHAT[30:]):
        await client.send(b"%x\r\n%b\r\n" % (len(piece), piece))
        await asyncio.sleep(0.01)
    await client.send(b"0\r\n\r\n")
    (response,) = await client.responses(1)
    assert response.status == 200
    assert orjson.loads(response.body)["usage"]["prompt_tokens"] == 3
    await client.close()


@pytest.mark.parametrize(
    "timing",
    [(), ("x-sim-latency-ms: 1",), ("x-sim-chunk-delay-ms: 1",)],
    ids=["instant", "first-token-latency", "chunk-delay"],
)
async def test_each_sse_event_is_its_own_chunk(sim: SimServer, timing: tuple[str, ...]) -> None:
    client = await open_client(sim)
    body = CHAT[:-1] + b',"stream":true,"stream_options":{"include_usage":true}}'
    await client.send(post("/v1/chat/completions", body, *timing))
    (response,) = await client.responses(1)
    events = bytes(response.body).split(b"\n\n")[:-1]
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["content-type"].startswith("text/event-stream")
    # role + 4 tokens + finish + usage + [DONE], each one HTTP chunk (plus the last, empty one)
    assert len(events) == 8 and response.chunks == 9
    assert events[-1] == b"data: [DONE]"
    await client.close()


async def test_expect_100_continue(sim: SimServer) -> None:
    client = await open_client(sim)
    head = post("/v1/chat/completions", CHAT, "expect: 100-continue")
    await client.send(head[: -len(CHAT)])
    async with asyncio.timeout(5):
        interim = await client.reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(CHAT)
    (response,) = await client.responses(1)
    assert response.status == 200
    await client.close()


async def test_http10_stream_is_close_delimited(sim: SimServer) -> None:
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    body = CHAT[:-1] + b',"stream":true}'
    writer.write(b"POST /v1/chat/completions HTTP/1.0\r\ncontent-length: %d\r\n\r\n" % len(body))
    writer.write(body)
    async with asyncio.timeout(5):
        raw = await reader.read()  # until the server closes
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and b"connection: close" in head
    assert payload.endswith(b"data: [DONE]\n\n")
    writer.close()
    await writer.wait_closed()


async def test_malformed_request_gets_400_and_close(sim: SimServer) -> None:
    client = await open_client(sim)
    await client.send(b"NOT HTTP AT ALL\r\n\r\n")
    await client.until_eof()
    assert client.done[0].status == 400
    await client.close()


async def test_stream_cut_after_n_content_chunks(sim: SimServer) -> None:
    client = await open_client(sim)
    body = CHAT[:-1] + b',"stream":true}'
    await client.send(post("/v1/chat/completions", body, "x-sim-cut-after: 2"))
    await client.until_eof()
    assert client.done == []  # never completed: no terminating chunk
    events = bytes(client.partial.body).split(b"\n\n")[:-1]
    assert len(events) == 3  # role chunk + 2 content chunks
    await wait_for(lambda: sim.stats.aborted == 1)
    await client.close()


async def test_non_stream_cut_sends_half_the_body(sim: SimServer) -> None:
    client = await open_client(sim)
    await client.send(post("/v1/chat/completions", CHAT, "x-sim-cut-after: 0"))
    await client.until_eof()
    assert client.done == []
    announced = int(client.partial.headers["content-length"])
    assert len(client.partial.body) == announced // 2
    await client.close()


async def test_garbage(sim: SimServer) -> None:
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    writer.write(post("/v1/chat/completions", CHAT, "x-sim-garbage: 1"))
    async with asyncio.timeout(5):
        assert await reader.read() == GARBAGE
    writer.close()
    await writer.wait_closed()


async def test_reset_is_a_tcp_reset_not_a_close(sim: SimServer) -> None:
    reader, writer = await asyncio.open_connection(sim.host, sim.port)
    writer.write(post("/v1/chat/completions", CHAT, "x-sim-reset: 1"))
    async with asyncio.timeout(5):
        with pytest.raises(ConnectionResetError):
            await reader.read()  # an orderly close would read b"" instead
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()
    await wait_for(lambda: sim.stats.aborted == 1)


async def test_client_disconnect_mid_stream_is_counted_and_stops(sim: SimServer) -> None:
    client = await open_client(sim)
    body = CHAT[:-1] + b',"stream":true}'
    await client.send(
        post("/v1/chat/completions", body, "x-sim-tokens: 1000", "x-sim-chunk-delay-ms: 20")
    )
    async with asyncio.timeout(5):
        while b"tok" not in client.partial.body:
            await client.read_some()
    assert sim.stats.in_flight == 1
    await client.close()
    await wait_for(lambda: sim.stats.cancelled == 1)
    assert sim.stats.in_flight == 0 and sim.stats.completed == 0


async def test_hang_until_server_close() -> None:
    server = await serve_openai()
    client = await open_client(server)
    await client.send(post("/v1/chat/completions", CHAT, "x-sim-hang: 1"))
    await wait_for(lambda: server.stats.in_flight == 1)
    await asyncio.sleep(0.05)
    assert client.done == []
    await server.close()
    await client.until_eof()
    assert server.stats.cancelled == 1
    await client.close()


async def test_slow_reader_gets_the_whole_stream(sim: SimServer) -> None:
    client = await open_client(sim)
    body = CHAT[:-1] + b',"stream":true}'
    # The latency makes it a timed stream, written event by event with flow control.
    timed = ("x-sim-tokens: 40000", "x-sim-latency-ms: 1")
    await client.send(post("/v1/chat/completions", body, *timed))
    await asyncio.sleep(0.3)  # let the server's buffer fill: it must pause, not drop
    (response,) = await client.responses(1, timeout=30)
    assert bytes(response.body).endswith(b"data: [DONE]\n\n")
    assert bytes(response.body).count(b"\n\n") == 40000 + 3
    await client.close()


async def test_control_endpoints(sim: SimServer) -> None:
    client = await open_client(sim)
    await client.send(post("/v1/chat/completions", CHAT) + get("/sim/stats"))
    _, stats = await client.responses(2)
    counters = orjson.loads(stats.body)
    assert counters["started"] == 1 and counters["completed"] == 1  # /sim/* not counted
    assert counters["by_path"] == {"/v1/chat/completions": 1}
    rules = orjson.dumps({"faults": ["status=503:1"], "health_status": 503})
    await client.send(
        post("/sim/faults", rules)
        + post("/v1/chat/completions", CHAT)
        + get("/health")
        + post("/sim/faults", b'{"faults": ["nope"]}')
        + post("/sim/faults", b'{"faults": [], "health_status": 200}')
        + get("/health")
        + post("/sim/reset", b"")
        + get("/sim/stats")
        + get("/sim/nothing")
    )
    responses = await client.responses(11)
    view, failed, unhealthy, rejected, cleared, healthy, reset, after, missing = responses[2:]
    assert orjson.loads(view.body) == {"faults": ["status=503:1"], "health_status": 503}
    assert failed.status == 503 and unhealthy.status == 503
    assert rejected.status == 400
    assert orjson.loads(cleared.body) == {"faults": [], "health_status": 200}
    assert healthy.status == 200 and reset.status == 200
    assert orjson.loads(after.body)["started"] == 0
    assert missing.status == 404
    await client.close()


async def test_core_serves_any_handler_and_survives_its_bugs() -> None:
    async def unfinished(responder: Responder) -> None:
        responder.start(200, b"text/plain")
        responder.chunk(b"partial")

    def handler(request: Request) -> Response | Deferred:
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/unfinished":
            return unfinished
        return Response(200, request.body, content_type=b"text/plain")

    stats = SimStats()
    server = await start_server(handler, stats=stats, faults=FaultInjector(), port=0)
    assert server.name == f"sim-{server.port}"
    client = await open_client(server)
    await client.send(post("/echo", b"hello") + get("/boom"))
    echo, boom = await client.responses(2)
    assert bytes(echo.body) == b"hello" and echo.headers["x-sim-name"] == server.name
    assert boom.status == 500
    await client.send(get("/unfinished"))
    await client.until_eof()  # a Deferred that forgets to finish ends the connection
    await client.close()
    await server.close()


async def test_upgrade_offer_answered_then_closed(sim: SimServer) -> None:
    client = await open_client(sim)
    await client.send(
        get("/v1/models", "connection: Upgrade, HTTP2-Settings", "upgrade: h2c", "http2-settings: ")
    )
    await client.until_eof()
    assert [r.status for r in client.done] == [200]
    await client.close()


async def test_bad_name_rejected_before_listening() -> None:
    with pytest.raises(ValueError, match="invalid simulator name"):
        await serve_openai(name="bad\r\nname")
