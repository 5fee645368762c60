"""OpenAI <-> Ollama translation through the real exchange (in-memory network edge).

Each test sends a client request in one protocol, checks what reaches the backend in
the other, answers as that backend would (streams split at awkward byte boundaries),
and checks what the client receives.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

from tests.memrig import Rig


def policy(front: str, backend: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
protocol: {front}
variants:
  - {{name: main, endpoints: ["http://127.0.0.1:9"], backend_protocol: {backend}, model: llama3}}
"""


def sent_to_backend(rig: Rig) -> tuple[bytes, dict[str, Any]]:
    raw = bytes(rig.upstream_t.data)
    head, _, body = raw.partition(b"\r\n\r\n")
    path = head.split(b" ")[1]
    return path, orjson.loads(body)


def client_body(rig: Rig) -> tuple[bytes, bytes]:
    """(head, de-chunked body) of what the client received."""
    raw = bytes(rig.client_t.data)
    head, _, rest = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head:
        return head, rest
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body += rest[:size]
        rest = rest[size + 2 :]
    return head, body


def respond(rig: Rig, status: int, ctype: bytes, pieces: list[bytes]) -> None:
    rig.upstream.data_received(
        b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n" % (status, ctype)
    )
    for piece in pieces:
        rig.upstream.data_received(b"%x\r\n%s\r\n" % (len(piece), piece))
    rig.upstream.data_received(b"0\r\n\r\n")


def sse_events(body: bytes) -> list[Any]:
    out: list[Any] = []
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: "):
            data = event[6:]
            out.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return out


async def test_openai_client_streams_from_ollama_backend() -> None:
    rig = Rig(policy("openai", "ollama"))
    req = {
        "model": "chat",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 5,
        "temperature": 0.5,
    }
    rig.request(body=orjson.dumps(req))
    path, body = sent_to_backend(rig)
    assert path == b"/api/chat"
    assert body == {
        "model": "llama3",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "options": {"num_predict": 5, "temperature": 0.5},
    }
    lines = [
        {"model": "llama3", "message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"model": "llama3", "message": {"role": "assistant", "content": "lo"}, "done": False},
        {
            "model": "llama3",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "length",
            "prompt_eval_count": 3,
            "eval_count": 2,
        },
    ]
    ndjson = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    respond(rig, 200, b"application/x-ndjson", [ndjson[:17], ndjson[17:80], ndjson[80:]])
    head, out = client_body(rig)
    assert b"content-type: text/event-stream" in head
    events = sse_events(out)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert all(c["model"] == "chat" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert rig.client.exchange is None


async def test_openai_client_non_stream_from_ollama_backend() -> None:
    rig = Rig(policy("openai", "ollama"))
    rig.request(
        body=orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "q"}]})
    )
    _, body = sent_to_backend(rig)
    assert body["stream"] is False
    reply = {
        "model": "llama3",
        "message": {"role": "assistant", "content": "answer"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 4,
        "eval_count": 1,
    }
    respond(rig, 200, b"application/json", [orjson.dumps(reply)])
    _head, out = client_body(rig)
    completion = orjson.loads(out)
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "chat"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "answer"}
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["total_tokens"] == 5


async def test_openai_embeddings_base64_from_ollama() -> None:
    rig = Rig(policy("openai", "ollama"))
    rig.request(
        path=b"/v1/embeddings",
        body=orjson.dumps({"model": "chat", "input": ["a", "b"], "encoding_format": "base64"}),
    )
    path, body = sent_to_backend(rig)
    assert (path, body) == (b"/api/embed", {"model": "llama3", "input": ["a", "b"]})
    respond(
        rig,
        200,
        b"application/json",
        [orjson.dumps({"model": "llama3", "embeddings": [[0.5, -1.0], [2.0, 0.25]]})],
    )
    _, out = client_body(rig)
    data = orjson.loads(out)["data"]
    decoded = [list(struct.unpack("<2f", base64.b64decode(d["embedding"]))) for d in data]
    assert decoded == [[0.5, -1.0], [2.0, 0.25]]


async def test_backend_error_is_reshaped_for_the_client() -> None:
    rig = Rig(policy("openai", "ollama"))
    rig.request(body=orjson.dumps({"model": "chat", "messages": []}))
    respond(rig, 404, b"application/json", [b'{"error":"model \\"llama3\\" not found"}'])
    head, out = client_body(rig)
    assert head.startswith(b"HTTP/1.1 404")
    err = orjson.loads(out)["error"]
    assert err["message"] == 'model "llama3" not found'
    assert err["type"] == "upstream_error"


async def test_ollama_client_streams_from_openai_backend() -> None:
    rig = Rig(policy("ollama", "openai"))
    rig.request(
        path=b"/api/chat",
        body=orjson.dumps(
            {
                "model": "chat",
                "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": 7, "seed": 3},
            }
        ),
    )
    path, body = sent_to_backend(rig)
    assert path == b"/v1/chat/completions"
    assert body == {  # Ollama streams by default; counts come from OpenAI's usage chunk
        "model": "llama3",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 7,
        "seed": 3,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return (
            b"data: "
            + orjson.dumps(
                {
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )
            + b"\n\n"
        )

    usage = (
        b"data: "
        + orjson.dumps(
            {
                "choices": [],
                "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
            }
        )
        + b"\n\n"
    )
    sse = (
        chunk({"role": "assistant", "content": ""})
        + chunk({"content": "Hi"})
        + chunk({"content": "!"})
        + chunk({}, "stop")
        + usage
        + b"data: [DONE]\n\n"
    )
    respond(rig, 200, b"text/event-stream", [sse[:30], sse[30:101], sse[101:]])
    head, out = client_body(rig)
    assert b"content-type: application/x-ndjson" in head
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "Hi!"
    assert [line["done"] for line in lines] == [False, False, True]
    assert lines[-1]["done_reason"] == "stop"
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (2, 2)


async def test_ollama_generate_and_embed_from_openai_backend() -> None:
    rig = Rig(policy("ollama", "openai"))
    rig.request(
        path=b"/api/generate", body=orjson.dumps({"model": "chat", "prompt": "p", "stream": False})
    )
    path, body = sent_to_backend(rig)
    assert (path, body["prompt"], body["stream"]) == (b"/v1/completions", "p", False)
    respond(
        rig,
        200,
        b"application/json",
        [
            orjson.dumps(
                {
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": "out", "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
                }
            )
        ],
    )
    _, out = client_body(rig)
    reply = orjson.loads(out)
    assert (reply["response"], reply["done"], reply["done_reason"]) == ("out", True, "length")
    assert reply["eval_count"] == 3

    rig = Rig(policy("ollama", "openai"))
    rig.request(path=b"/api/embed", body=orjson.dumps({"model": "chat", "input": "x"}))
    path, body = sent_to_backend(rig)
    assert (path, body["encoding_format"]) == (b"/v1/embeddings", "float")
    respond(
        rig,
        200,
        b"application/json",
        [
            orjson.dumps(
                {"data": [{"embedding": [1.0, 2.0], "index": 0}], "usage": {"prompt_tokens": 1}}
            )
        ],
    )
    _, out = client_body(rig)
    assert orjson.loads(out)["embeddings"] == [[1.0, 2.0]]


async def test_cut_translated_stream_ends_with_error_not_done() -> None:
    rig = Rig(policy("ollama", "openai"))
    rig.request(path=b"/api/chat", body=orjson.dumps({"model": "chat", "messages": []}))
    rig.upstream.data_received(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n"
        % (
            len(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'),
            b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
        )
    )
    rig.upstream.connection_lost(ConnectionResetError())
    _, out = client_body(rig)
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert lines[0]["message"]["content"] == "a"
    assert "error" in lines[-1]
    assert not any(line.get("done") for line in lines)
    assert rig.client_t.aborted
