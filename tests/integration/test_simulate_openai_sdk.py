"""The official `openai` SDK (sync and async) against a simulator subprocess.

The simulator runs exactly as users start it (`python -m gateway simulate openai --port 0`);
these tests hold it to the wire format real clients parse, and to its faults.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import httptools
import httpx
import openai
import pytest

from tests.procs import Simulator, start_simulator

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "tell me about switchyards"}
]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    simulator = start_simulator(
        "sdk-sim",
        "--tokens",
        "6",
        "--seed",
        "3",
        "--served-model",
        "alpha",
        "--served-model",
        "beta",
    )
    try:
        yield simulator
    finally:
        simulator.proc.stop()


@pytest.fixture
def client(sim: Simulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{sim.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_chat_plain(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="alpha", messages=MESSAGES)
    completion = raw.parse()
    assert raw.headers["x-sim-name"] == "sdk-sim"
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "alpha"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4 and completion.usage.completion_tokens == 6
    short = client.chat.completions.create(model="alpha", messages=MESSAGES, max_tokens=2)
    assert short.choices[0].finish_reason == "length"


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="alpha", messages=MESSAGES)
    chunks = list(client.chat.completions.create(model="alpha", messages=MESSAGES, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == plain.choices[0].message.content  # deterministic, same tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="alpha",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])


async def test_async_chat_plain_and_stream(sim: Simulator) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{sim.url}/v1", api_key="unused", max_retries=0
    ) as client:
        plain = await client.chat.completions.create(model="beta", messages=MESSAGES)
        stream = await client.chat.completions.create(
            model="beta",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces) == plain.choices[0].message.content
        embedded = await client.embeddings.create(model="beta", input="async")
        assert len(embedded.data[0].embedding) == 8


def test_completions_plain_and_stream(client: openai.OpenAI) -> None:
    plain = client.completions.create(model="alpha", prompt="once upon a time", max_tokens=4)
    assert plain.object == "text_completion"
    assert plain.choices[0].finish_reason == "length"
    assert len(plain.choices[0].text.split()) == 4
    chunks = list(
        client.completions.create(
            model="alpha",
            prompt="once upon a time",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 4


def test_embeddings_base64_default_and_float(client: openai.OpenAI) -> None:
    # The SDK asks for base64 unless told otherwise and decodes little-endian float32.
    default = client.embeddings.create(model="alpha", input=["first text", "second"])
    floats = client.embeddings.create(
        model="alpha", input=["first text", "second"], encoding_format="float"
    )
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert len(default.data) == 2 and len(default.data[0].embedding) == 8
    assert default.usage.prompt_tokens == 3
    sized = client.embeddings.create(model="alpha", input="x", dimensions=64)
    assert len(sized.data[0].embedding) == 64


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["alpha", "beta"]


def test_status_header_maps_to_sdk_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(
            model="alpha", messages=MESSAGES, extra_headers={"x-sim-status": "429"}
        )
    assert limited.value.status_code == 429
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="alpha", messages=[])


def test_error_rate_one_gives_internal_server_errors() -> None:
    failing = start_simulator("failing", "--error-rate", "1.0")
    try:
        with openai.OpenAI(base_url=f"{failing.url}/v1", api_key="x", max_retries=0) as client:
            for _ in range(3):
                with pytest.raises(openai.InternalServerError) as error:
                    client.chat.completions.create(model="m", messages=MESSAGES)
                assert error.value.status_code == 500
            assert [m.id for m in client.models.list()] == ["sim"]  # faults spare /v1/models
    finally:
        failing.proc.stop()


def test_cut_after_breaks_the_response(client: openai.OpenAI) -> None:
    cut = {"x-sim-cut-after": "2"}
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="alpha", messages=MESSAGES, extra_headers=cut)
    stream = client.chat.completions.create(
        model="alpha", messages=MESSAGES, stream=True, extra_headers=cut
    )
    seen: list[str] = []
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):  # noqa: PT012
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert len([s for s in seen if s]) == 2


def test_cut_stream_is_incomplete_for_httpx(sim: Simulator) -> None:
    body = {"model": "alpha", "messages": MESSAGES, "stream": True}
    url = f"{sim.url}/v1/chat/completions"
    cut = {"x-sim-cut-after": "1"}
    with httpx.Client(timeout=5) as http, http.stream("POST", url, json=body, headers=cut) as reply:
        assert reply.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            reply.read()


def test_client_disconnect_mid_stream_counted_as_cancelled(
    sim: Simulator, client: openai.OpenAI
) -> None:
    before = sim.stats()["cancelled"]
    assert isinstance(before, int)
    stream = client.chat.completions.create(
        model="alpha",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-sim-tokens": "500", "x-sim-chunk-delay-ms": "20"},
    )
    for index, _ in enumerate(stream):
        if index == 2:
            break
    stream.close()
    assert wait_until(lambda: sim.stats()["cancelled"] == before + 1)
    assert wait_until(lambda: sim.stats()["in_flight"] == 0)


def test_latency_header(client: openai.OpenAI) -> None:
    started = time.monotonic()
    client.chat.completions.create(
        model="alpha", messages=MESSAGES, extra_headers={"x-sim-latency-ms": "200"}
    )
    assert time.monotonic() - started >= 0.19


class _Responses:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.bodies: list[bytes] = []
        self.body = b""

    def on_message_begin(self) -> None:
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.bodies.append(self.body)


def exchange(sim: Simulator, *pieces: bytes) -> list[bytes]:
    """Send `pieces` on one raw connection and read responses until the server closes."""
    responses = _Responses()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.01)
        while data := sock.recv(65536):
            responses.parser.feed_data(data)
    return responses.bodies


def chat_request(content: str, *headers: str) -> bytes:
    body = b'{"model":"alpha","messages":[{"role":"user","content":"%s"}]}' % content.encode()
    lines = ["POST /v1/chat/completions HTTP/1.1", "host: sim", f"content-length: {len(body)}"]
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode() + body


def test_pipelined_requests_answered_in_order(sim: Simulator, client: openai.OpenAI) -> None:
    expected = [
        client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": word}])
        .choices[0]
        .message.content
        for word in ("first", "second", "third")
    ]
    burst = (
        chat_request("first", "x-sim-latency-ms: 150")
        + chat_request("second")
        + chat_request("third", "connection: close")
    )
    bodies = exchange(sim, burst)
    contents = [openai.types.chat.ChatCompletion.model_validate_json(b) for b in bodies]
    assert [c.choices[0].message.content for c in contents] == expected


def test_chunked_request_body(sim: Simulator) -> None:
    body = b'{"model":"alpha","messages":[{"role":"user","content":"a b c d e"}]}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\n"
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    chunks = [b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:7], body[7:40], body[40:])]
    (reply,) = exchange(sim, head, *chunks, b"0\r\n\r\n")
    completion = openai.types.chat.ChatCompletion.model_validate_json(reply)
    assert completion.usage is not None and completion.usage.prompt_tokens == 5
