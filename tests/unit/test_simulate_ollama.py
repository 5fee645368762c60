"""The Ollama handler called directly: wire format, Ollama's validation order, faults.

Bodies are validated with the `ollama` package's own response types; streams are read
from the chunks of the prepared response (one NDJSON line per HTTP chunk). Transport
behaviour (cuts, disconnects, chunk timing) is covered by the integration tests.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from ollama import (
    ChatResponse,
    EmbeddingsResponse,
    EmbedResponse,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    ShowResponse,
)

from gateway.simulate.exchange import Request, Response
from gateway.simulate.faults import FaultInjector, FaultRule
from gateway.simulate.ollama import OllamaOptions, OllamaSimulator
from gateway.simulate.ollama_wire import rfc3339

CHAT = "/api/chat"
GENERATE = "/api/generate"
MESSAGES = [{"role": "user", "content": "one two three"}]
NOW = 1_700_000_000_123_456_000  # 2023-11-14T22:13:20.123456Z


def make(**options: Any) -> OllamaSimulator:
    opts = OllamaOptions(**options)
    return OllamaSimulator(opts, FaultInjector(opts.fault_rules(), opts.seed), clock=lambda: NOW)


def call(
    sim: OllamaSimulator,
    path: str,
    body: object = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
    result = sim(Request(method, path, b"", headers or {}, raw, True, "1.1"))
    assert isinstance(result, Response), result
    return result


def json_of(response: Response) -> Any:
    assert response.chunks is None
    return orjson.loads(response.body)


def lines_of(response: Response) -> list[Any]:
    """A stream's NDJSON lines; each chunk must be exactly one newline-ended line."""
    assert response.chunks is not None
    assert all(chunk.endswith(b"\n") and chunk.count(b"\n") == 1 for chunk in response.chunks)
    return [orjson.loads(chunk) for chunk in response.chunks]


def test_rfc3339_like_go() -> None:
    assert rfc3339(NOW) == "2023-11-14T22:13:20.123456Z"
    assert rfc3339(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert rfc3339(1_700_000_000_000_000_001) == "2023-11-14T22:13:20.000000001Z"


def test_chat_plain_matches_client_types_and_go_key_order() -> None:
    sim = make(tokens=5, seed=1)
    response = call(sim, CHAT, {"model": "llama3.2", "messages": MESSAGES, "stream": False})
    assert (response.status, response.content_type) == (200, b"application/json; charset=utf-8")
    body = json_of(response)
    assert list(body) == [
        "model",
        "created_at",
        "message",
        "done_reason",
        "done",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ]
    chat = ChatResponse(**body)
    assert (chat.model, chat.created_at) == ("llama3.2", "2023-11-14T22:13:20.123456Z")
    assert chat.message.role == "assistant"
    assert chat.message.content is not None and len(chat.message.content.split()) == 5
    assert (chat.done, chat.done_reason) == (True, "stop")
    assert (chat.prompt_eval_count, chat.eval_count) == (3, 5)
    assert chat.total_duration == (
        (chat.load_duration or 0) + (chat.prompt_eval_duration or 0) + (chat.eval_duration or 0)
    )


def test_chat_streams_by_default_one_line_per_token_then_done() -> None:
    sim = make(tokens=4, seed=1)
    plain = json_of(call(sim, CHAT, {"model": "m", "messages": MESSAGES, "stream": False}))
    for stream in ({}, {"stream": None}, {"stream": True}):
        response = call(sim, CHAT, {"model": "m", "messages": MESSAGES, **stream})
        assert response.content_type == b"application/x-ndjson"
        lines = lines_of(response)
        parts = [ChatResponse(**line) for line in lines]
        assert [p.done for p in parts] == [False] * 4 + [True]
        assert all(set(line) == {"model", "created_at", "message", "done"} for line in lines[:-1])
        assert "".join(p.message.content or "" for p in parts) == plain["message"]["content"]
        final = parts[-1]
        assert (final.done_reason, final.eval_count, final.prompt_eval_count) == ("stop", 4, 3)
        assert final.message.content == ""


def test_num_predict_limits_with_length_and_bad_value_is_500() -> None:
    sim = make(tokens=10)
    body = {"model": "m", "messages": MESSAGES, "stream": False}
    short = json_of(call(sim, CHAT, {**body, "options": {"num_predict": 3}}))
    assert (short["done_reason"], short["eval_count"]) == ("length", 3)
    for unlimited in (-1, -2, 0, 10, 99.5):
        roomy = json_of(call(sim, CHAT, {**body, "options": {"num_predict": unlimited}}))
        assert (roomy["done_reason"], roomy["eval_count"]) == ("stop", 10)
    # Ollama converts options when it schedules the model and answers a bad one with 500.
    bad = call(sim, CHAT, {**body, "options": {"num_predict": "3"}})
    assert bad.status == 500
    assert json_of(bad) == {"error": 'option "num_predict" must be of type integer'}


def test_x_sim_tokens_and_latency_show_in_the_answer() -> None:
    sim = make(tokens=10, latency_ms=20)
    body = {"model": "m", "messages": MESSAGES, "stream": False}
    plain = call(sim, CHAT, body, headers={"x-sim-tokens": "2"})
    assert plain.delay == pytest.approx(0.020)
    answer = json_of(plain)
    assert (answer["eval_count"], answer["prompt_eval_duration"]) == (2, 20_000_000)
    fast = call(sim, CHAT, body, headers={"x-sim-latency-ms": "0"})
    assert fast.delay == 0
    assert json_of(fast)["prompt_eval_duration"] == 3_000  # nominal: 1 us per prompt token


def test_generate_plain_and_stream_with_context() -> None:
    sim = make(tokens=3, seed=2)
    request = {"model": "m", "prompt": "why is the sky blue", "system": "be brief"}
    plain = GenerateResponse(**json_of(call(sim, GENERATE, {**request, "stream": False})))
    assert (plain.done, plain.done_reason, plain.prompt_eval_count) == (True, "stop", 7)
    assert plain.response is not None and len(plain.response.split()) == 3
    assert plain.context is not None and len(plain.context) == 7 + 3
    lines = lines_of(call(sim, GENERATE, request))
    parts = [GenerateResponse(**line) for line in lines]
    assert "".join(p.response or "" for p in parts) == plain.response
    assert list(lines[-1])[:5] == ["model", "created_at", "response", "done", "done_reason"]
    assert parts[-1].context == plain.context and parts[-1].response == ""
    # The context carries the conversation into the next turn.
    turn = {"model": "m", "prompt": "more", "context": plain.context, "stream": False}
    follow = json_of(call(sim, GENERATE, turn))
    assert follow["prompt_eval_count"] == 10 + 1
    assert follow["context"][:10] == plain.context


def test_generate_raw_mode_has_no_context_and_rejects_system() -> None:
    sim = make()
    raw = json_of(call(sim, GENERATE, {"model": "m", "prompt": "x", "raw": True, "stream": False}))
    assert "context" not in raw
    bad = call(sim, GENERATE, {"model": "m", "prompt": "x", "raw": True, "system": "s"})
    assert bad.status == 400
    assert json_of(bad) == {"error": "raw mode does not support template, system, or context"}


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (CHAT, {"model": "m"}, {"message": {"role": "assistant", "content": ""}}),
        (CHAT, {"model": "m", "messages": []}, {"message": {"role": "assistant", "content": ""}}),
        (GENERATE, {"model": "m"}, {"response": ""}),
    ],
)
def test_nothing_to_generate_loads_or_unloads_the_model(
    path: str, body: dict[str, object], expected: dict[str, object]
) -> None:
    sim = make()
    loaded = json_of(call(sim, path, body))
    assert loaded == {
        "model": "m",
        "created_at": "2023-11-14T22:13:20.123456Z",
        **expected,
        "done": True,
        "done_reason": "load",
    }
    for zero in (0, "0", "0s", 0.0):
        assert json_of(call(sim, path, {**body, "keep_alive": zero}))["done_reason"] == "unload"
    assert json_of(call(sim, path, {**body, "keep_alive": "5m"}))["done_reason"] == "load"


def test_embed_and_legacy_embeddings() -> None:
    sim = make(embedding_dimensions=6)
    single = EmbedResponse(**json_of(call(sim, "/api/embed", {"model": "e", "input": "a b"})))
    many = json_of(call(sim, "/api/embed", {"model": "e", "input": ["a b", "c"]}))
    assert list(many) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert many["prompt_eval_count"] == 3 and len(many["embeddings"]) == 2
    assert many["embeddings"][0] == list(single.embeddings[0])
    assert all(abs(sum(v * v for v in vec) - 1) < 1e-6 for vec in many["embeddings"])
    short = json_of(call(sim, "/api/embed", {"model": "e", "input": "a b", "dimensions": 3}))
    assert len(short["embeddings"][0]) == 3
    assert abs(sum(v * v for v in short["embeddings"][0]) - 1) < 1e-6
    assert json_of(call(sim, "/api/embed", {"model": "e", "input": ""})) == {
        "model": "e",
        "embeddings": [],
    }
    legacy = EmbeddingsResponse(
        **json_of(call(sim, "/api/embeddings", {"model": "e", "prompt": "a b"}))
    )
    assert list(legacy.embedding) == many["embeddings"][0]
    assert json_of(call(sim, "/api/embeddings", {"model": "e"})) == {"embedding": []}
    bad = call(sim, "/api/embed", {"model": "e", "input": [1, 2]})
    assert (bad.status, json_of(bad)) == (400, {"error": "invalid input type"})


def test_tags_show_ps_version_root() -> None:
    sim = make(served_models=("llama3.2", "qwen:0.5b"), context_length=2048)
    tags = ListResponse(**json_of(call(sim, "/api/tags", method="GET")))
    assert [m.model for m in tags.models] == ["llama3.2:latest", "qwen:0.5b"]
    raw = json_of(call(sim, "/api/tags", method="GET"))["models"][0]
    assert list(raw) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert raw["modified_at"] == "2023-11-14T22:13:20.123456Z" and len(raw["digest"]) == 64
    show = ShowResponse(**json_of(call(sim, "/api/show", {"model": "LLAMA3.2"})))
    assert show.modelinfo is not None and show.modelinfo["sim.context_length"] == 2048
    assert show.details is not None and show.details.format == "gguf"
    assert ShowResponse(**json_of(call(sim, "/api/show", {"name": "other"}))).capabilities
    ps = ProcessResponse(**json_of(call(sim, "/api/ps", method="GET")))
    assert [(m.name, m.context_length) for m in ps.models] == [
        ("llama3.2:latest", 2048),
        ("qwen:0.5b", 2048),
    ]
    assert json_of(call(sim, "/api/version", method="GET")) == {"version": "0.12.6"}
    root = call(sim, "/", method="GET")
    assert (root.body, root.content_type) == (b"Ollama is running", b"text/plain; charset=utf-8")
    assert call(sim, "/", method="HEAD").body == b""
    assert call(sim, "/api/tags", method="HEAD").status == 200


def test_unknown_paths_and_methods_answer_like_gin() -> None:
    sim = make()
    missing = call(sim, "/api/nope", method="GET")
    assert (missing.status, missing.body, missing.content_type) == (
        404,
        b"404 page not found",
        b"text/plain; charset=utf-8",
    )
    wrong = call(sim, CHAT, method="GET")
    assert (wrong.status, wrong.body) == (405, b"405 method not allowed")


def test_strict_models_404_and_tag_matching() -> None:
    sim = make(served_models=("llama3.2",), strict_models=True)
    body = {"messages": MESSAGES, "stream": False}
    for known in ("llama3.2", "llama3.2:latest", "Llama3.2:Latest"):
        assert call(sim, CHAT, {"model": known, **body}).status == 200
    for path in (CHAT, GENERATE, "/api/embed", "/api/show"):
        missing = call(sim, path, {"model": "mistral", "prompt": "x", **body})
        assert (missing.status, json_of(missing)) == (404, {"error": "model 'mistral' not found"})
    legacy = call(sim, "/api/embeddings", {"model": "mistral", "prompt": "x"})
    assert legacy.status == 404
    assert json_of(legacy)["error"] == 'model "mistral" not found, try pulling it first'


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (CHAT, b"", "missing request body"),
        (CHAT, b"[]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (CHAT, {"messages": MESSAGES}, "model is required"),
        (
            CHAT,
            {"model": "m", "messages": MESSAGES, "stream": "yes"},
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            CHAT,
            {"model": "m", "messages": "hi"},
            "json: cannot unmarshal string into Go struct field ChatRequest.messages"
            " of type []api.Message",
        ),
        (
            CHAT,
            {"model": "m", "messages": [{"role": "user", "content": 7}]},
            "json: cannot unmarshal number 7 into Go struct field"
            " ChatRequest.messages.content of type string",
        ),
        (
            GENERATE,
            {"model": 3, "prompt": "x"},
            "json: cannot unmarshal number 3 into Go struct field"
            " GenerateRequest.model of type string",
        ),
        ("/api/embed", {"model": "m", "input": "x", "dimensions": 1.5}, None),
        ("/api/embeddings", {"prompt": "x"}, "model is required"),
        ("/api/show", {}, "model is required"),
    ],
)
def test_bad_requests_get_ollama_errors(path: str, body: object, message: str | None) -> None:
    response = call(make(), path, body)
    assert response.status == 400
    assert response.content_type == b"application/json; charset=utf-8"
    error = json_of(response)
    assert list(error) == ["error"]
    if message is not None:
        assert error["error"] == message
    assert call(make(), CHAT, b"{oops").status == 400


def test_faults_spare_the_model_endpoints() -> None:
    sim = make(error_rate=1.0, latency_ms=5)
    for path in (CHAT, GENERATE, "/api/embed", "/api/embeddings"):
        failed = call(sim, path, {"model": "m", "prompt": "x"})
        assert (failed.status, json_of(failed)) == (500, {"error": "simulated failure: 500"})
        assert failed.delay == pytest.approx(0.005)
    assert call(sim, "/api/tags", method="GET").status == 200
    assert call(sim, "/api/show", {"model": "m"}).status == 200
    limited = call(make(), CHAT, {}, headers={"x-sim-status": "429"})
    assert (limited.status, json_of(limited)["error"]) == (429, "simulated failure: 429")
    assert call(make(), CHAT, {}, headers={"x-sim-status": "abc"}).status == 400


def test_hang_garbage_and_cut_are_deferred() -> None:
    sim = make()
    body = orjson.dumps({"model": "m", "messages": MESSAGES})
    for header in ({"x-sim-hang": "1"}, {"x-sim-garbage": "1"}, {"x-sim-cut-after": "1"}):
        result = sim(Request("POST", CHAT, b"", header, body, True, "1.1"))
        assert not isinstance(result, Response)


def test_same_prompt_same_answer_other_seed_other_answer() -> None:
    def content(seed: int) -> str:
        body = json_of(
            call(make(seed=seed), CHAT, {"model": "m", "messages": MESSAGES, "stream": False})
        )
        text: str = body["message"]["content"]
        return text

    assert content(1) == content(1)
    assert content(1) != content(2)


def test_options_validated() -> None:
    with pytest.raises(ValueError, match="served_models"):
        OllamaOptions(served_models=("",))
    with pytest.raises(ValueError, match="error_rate"):
        OllamaOptions(error_rate=-0.1)
    with pytest.raises(ValueError, match="embedding_dimensions"):
        OllamaOptions(embedding_dimensions=0)
    rules = OllamaOptions(error_rate=0.5, faults=(FaultRule("cut", 2, 0.1),)).fault_rules()
    assert rules == [FaultRule("status", 500, 0.5), FaultRule("cut", 2, 0.1)]
