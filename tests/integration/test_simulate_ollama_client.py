"""The official `ollama` client (sync and async) against an Ollama simulator subprocess.

The simulator runs exactly as users start it (`python -m gateway simulate ollama
--port 0`); these tests hold it to the wire format the real client parses, and record
what that client does when the simulator misbehaves on purpose.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import httpx
import ollama
import orjson
import pytest

from tests.procs import Simulator, start_simulator

MESSAGES = [{"role": "user", "content": "tell me about switchyards"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = start_simulator(
        "ollama-sim",
        "--tokens",
        "6",
        "--seed",
        "3",
        "--served-model",
        "llama3.2",
        "--served-model",
        "qwen2.5:0.5b",
        "--embedding-dim",
        "16",
        kind="ollama",
    )
    try:
        yield simulator
    finally:
        simulator.proc.stop()


@pytest.fixture
def client(sim: Simulator) -> Iterator[ollama.Client]:
    with ollama.Client(host=sim.url) as c:
        yield c


def with_headers(sim: Simulator, **headers: str) -> ollama.Client:
    """A client sending `x-sim-*` headers (underscores become dashes)."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return ollama.Client(host=sim.url, headers=named)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def counter(sim: Simulator, name: str) -> int:
    value = sim.stats()[name]
    assert isinstance(value, int)
    return value


def test_chat_plain(client: ollama.Client) -> None:
    reply = client.chat(model="llama3.2", messages=MESSAGES)
    assert reply.model == "llama3.2" and reply.created_at
    assert (reply.message.role, reply.done, reply.done_reason) == ("assistant", True, "stop")
    assert reply.message.content is not None and len(reply.message.content.split()) == 6
    assert (reply.prompt_eval_count, reply.eval_count) == (4, 6)
    assert reply.total_duration and reply.load_duration and reply.eval_duration
    short = client.chat(model="llama3.2", messages=MESSAGES, options={"num_predict": 2})
    assert (short.done_reason, short.eval_count) == ("length", 2)


def test_chat_stream(client: ollama.Client) -> None:
    plain = client.chat(model="llama3.2", messages=MESSAGES)
    parts = list(client.chat(model="llama3.2", messages=MESSAGES, stream=True))
    assert [p.done for p in parts] == [False] * 6 + [True]
    assert "".join(p.message.content or "" for p in parts) == plain.message.content
    final = parts[-1]
    assert (final.done_reason, final.eval_count, final.prompt_eval_count) == ("stop", 6, 4)
    assert all(p.done_reason is None and p.eval_count is None for p in parts[:-1])


def test_generate_plain_stream_and_context(client: ollama.Client) -> None:
    plain = client.generate(model="qwen2.5:0.5b", prompt="why is the sky blue")
    assert plain.response is not None and len(plain.response.split()) == 6
    assert plain.context is not None and len(plain.context) == 5 + 6
    parts = list(client.generate(model="qwen2.5:0.5b", prompt="why is the sky blue", stream=True))
    assert "".join(p.response or "" for p in parts) == plain.response
    assert parts[-1].done and parts[-1].context == plain.context
    follow = client.generate(model="qwen2.5:0.5b", prompt="and red", context=plain.context)
    assert follow.prompt_eval_count == 11 + 2


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    batch = client.embed(model="llama3.2", input=["first text", "second"])
    assert len(batch.embeddings) == 2 and len(batch.embeddings[0]) == 16
    assert batch.prompt_eval_count == 3
    assert client.embed(model="llama3.2", input="first text").embeddings[0] == batch.embeddings[0]
    assert len(client.embed(model="llama3.2", input="x", dimensions=4).embeddings[0]) == 4
    legacy = client.embeddings(model="llama3.2", prompt="first text")
    assert list(legacy.embedding) == list(batch.embeddings[0])


def test_list_show_ps_version_root(sim: Simulator, client: ollama.Client) -> None:
    models = client.list().models
    assert [m.model for m in models] == ["llama3.2:latest", "qwen2.5:0.5b"]
    assert models[0].details is not None and models[0].details.format == "gguf"
    assert models[0].size and models[0].digest and models[0].modified_at
    shown = client.show("llama3.2")
    assert shown.modelinfo is not None and shown.modelinfo["sim.embedding_length"] == 16
    assert [m.name for m in client.ps().models] == ["llama3.2:latest", "qwen2.5:0.5b"]
    version = httpx.get(f"{sim.url}/api/version", timeout=5)
    assert version.json() == {"version": "0.12.6"}
    root = httpx.get(sim.url, timeout=5)
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["x-sim-name"] == "ollama-sim"
    assert httpx.head(sim.url, timeout=5).status_code == 200


async def test_async_client(sim: Simulator) -> None:
    async with ollama.AsyncClient(host=sim.url) as client:
        plain = await client.chat(model="llama3.2", messages=MESSAGES)
        stream = await client.chat(model="llama3.2", messages=MESSAGES, stream=True)
        pieces = [part.message.content or "" async for part in stream]
        assert "".join(pieces) == plain.message.content
        generated = await client.generate(model="llama3.2", prompt="once upon")
        chunks = [
            p
            async for p in await client.generate(model="llama3.2", prompt="once upon", stream=True)
        ]
        assert "".join(p.response or "" for p in chunks) == generated.response
        assert len((await client.embed(model="llama3.2", input="x")).embeddings[0]) == 16
        assert len((await client.list()).models) == 2
        assert (await client.show("qwen2.5:0.5b")).details is not None


def test_status_header_raises_response_error(sim: Simulator) -> None:
    with with_headers(sim, x_sim_status="503") as failing:
        with pytest.raises(ollama.ResponseError) as plain:
            failing.chat(model="llama3.2", messages=MESSAGES)
        assert (plain.value.status_code, plain.value.error) == (503, "simulated failure: 503")
        with pytest.raises(ollama.ResponseError) as streamed:
            list(failing.generate(model="llama3.2", prompt="x", stream=True))
        assert streamed.value.status_code == 503
        assert failing.list().models  # faults spare /api/tags


def test_strict_models_404() -> None:
    strict = start_simulator(
        "strict", "--strict-models", "--served-model", "llama3.2", kind="ollama"
    )
    try:
        with ollama.Client(host=strict.url) as client:
            assert client.chat(model="llama3.2:latest", messages=MESSAGES).done
            with pytest.raises(ollama.ResponseError) as missing:
                client.chat(model="mistral", messages=MESSAGES)
            assert (missing.value.status_code, missing.value.error) == (
                404,
                "model 'mistral' not found",
            )
            with pytest.raises(ollama.ResponseError) as unshown:
                client.show("mistral")
            assert unshown.value.status_code == 404
    finally:
        strict.proc.stop()


def test_cut_stream_ends_without_done_and_raises(sim: Simulator) -> None:
    # The real client does not notice a missing done line by itself: it is httpx that
    # raises, because the chunked body never got its terminating chunk.
    with with_headers(sim, x_sim_cut_after="2") as cutting:
        seen: list[ollama.ChatResponse] = []
        with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012
            for part in cutting.chat(model="llama3.2", messages=MESSAGES, stream=True):
                seen.append(part)
        assert len(seen) == 2 and not any(p.done for p in seen)
        with pytest.raises(httpx.RemoteProtocolError):
            cutting.chat(model="llama3.2", messages=MESSAGES)


async def test_cut_stream_async(sim: Simulator) -> None:
    async with ollama.AsyncClient(host=sim.url, headers={"x-sim-cut-after": "3"}) as client:
        seen: list[ollama.GenerateResponse] = []
        with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012
            async for part in await client.generate(model="llama3.2", prompt="x", stream=True):
                seen.append(part)
        assert len(seen) == 3 and not any(p.done for p in seen)


def test_garbage_and_hang(sim: Simulator) -> None:
    garbled = with_headers(sim, x_sim_garbage="1")
    with garbled, pytest.raises(httpx.RemoteProtocolError, match="illegal status line"):
        garbled.chat(model="llama3.2", messages=MESSAGES)
    before = counter(sim, "cancelled")
    hung = ollama.Client(host=sim.url, headers={"x-sim-hang": "1"}, timeout=0.3)
    with hung, pytest.raises(httpx.ReadTimeout):
        hung.chat(model="llama3.2", messages=MESSAGES)
    assert wait_until(lambda: counter(sim, "cancelled") == before + 1)


def test_client_disconnect_mid_stream_counted_as_cancelled(sim: Simulator) -> None:
    before = counter(sim, "cancelled")
    with with_headers(sim, x_sim_tokens="500", x_sim_chunk_delay_ms="20") as slow:
        stream = slow.chat(model="llama3.2", messages=MESSAGES, stream=True)
        for index, _ in enumerate(stream):
            if index == 2:
                break
        stream.close()  # leaves the client's `with stream(...)`: the connection closes
    assert wait_until(lambda: counter(sim, "cancelled") == before + 1)
    assert wait_until(lambda: counter(sim, "in_flight") == 0)


def test_latency_and_chunk_delay(sim: Simulator) -> None:
    with with_headers(sim, x_sim_latency_ms="150", x_sim_chunk_delay_ms="20") as slow:
        started = time.monotonic()
        parts = list(slow.chat(model="llama3.2", messages=MESSAGES, stream=True))
        elapsed = time.monotonic() - started
    assert elapsed >= 0.15 + 5 * 0.02 - 0.01
    final = parts[-1]
    assert (final.prompt_eval_duration, final.eval_duration) == (150_000_000, 6 * 20_000_000)


class _Chunks:
    """httptools callbacks: the status, headers and each chunk's body of one response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_chunk_header(self) -> None:
        self.chunks.append(b"")

    def on_body(self, body: bytes) -> None:
        self.chunks[-1] += body

    def on_message_complete(self) -> None:
        self.complete = True


@pytest.mark.parametrize("delay", ["0", "5"])
def test_each_ndjson_line_is_its_own_http_chunk(sim: Simulator, delay: str) -> None:
    body = orjson.dumps({"model": "llama3.2", "messages": MESSAGES})
    request = (
        "POST /api/chat HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n"
        f"x-sim-chunk-delay-ms: {delay}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    reply = _Chunks()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(request)
        while data := sock.recv(65536):
            reply.parser.feed_data(data)
    assert reply.complete
    assert reply.headers["content-type"] == "application/x-ndjson"
    assert reply.headers["transfer-encoding"] == "chunked"
    lines: list[Any] = [orjson.loads(chunk) for chunk in reply.chunks if chunk]
    assert all(chunk.endswith(b"\n") and chunk.count(b"\n") == 1 for chunk in reply.chunks if chunk)
    assert [line["done"] for line in lines] == [False] * 6 + [True]
