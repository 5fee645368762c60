"""The OpenAI / vLLM handler called directly: wire format, validation, metrics.

Streams and transport faults need a connection; they are covered in
`test_simulate_server.py` and the integration tests.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import openai.types as oai
import openai.types.chat as oai_chat
import orjson
import pytest

from gateway.controlplane.backends.load import parse_vllm_metrics
from gateway.simulate.exchange import Request, Response
from gateway.simulate.faults import FaultInjector, FaultRule
from gateway.simulate.openai import OpenAIOptions, OpenAISimulator
from gateway.simulate.stats import SimStats

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "one two three"}]


def make(**options: Any) -> tuple[OpenAISimulator, SimStats, FaultInjector]:
    opts = OpenAIOptions(**options)
    stats = SimStats()
    faults = FaultInjector(opts.fault_rules(), opts.seed)
    return OpenAISimulator(opts, stats, faults), stats, faults


def call(
    sim: OpenAISimulator,
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
    return orjson.loads(response.body)


def test_chat_completion_matches_sdk_types() -> None:
    sim, _, _ = make(tokens=5, seed=1)
    response = call(sim, CHAT, {"model": "my-model", "messages": MESSAGES})
    assert response.status == 200
    assert response.delay == 0
    completion = oai_chat.ChatCompletion.model_validate(json_of(response))
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "my-model"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 5)
    assert completion.usage.total_tokens == 8
    content = completion.choices[0].message.content
    assert content is not None and len(content.split()) == 5


def test_same_prompt_same_answer_other_seed_other_answer() -> None:
    def content(seed: int) -> str:
        sim, _, _ = make(seed=seed)
        body = json_of(call(sim, CHAT, {"model": "m", "messages": MESSAGES}))
        text: str = body["choices"][0]["message"]["content"]
        return text

    assert content(1) == content(1)
    assert content(1) != content(2)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates_with_length(field: str) -> None:
    sim, _, _ = make(tokens=10)
    body = json_of(call(sim, CHAT, {"model": "m", "messages": MESSAGES, field: 4}))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    roomy = json_of(call(sim, CHAT, {"model": "m", "messages": MESSAGES, field: 10}))
    assert roomy["choices"][0]["finish_reason"] == "stop"


def test_x_sim_tokens_and_latency_headers() -> None:
    sim, _, _ = make(tokens=10, latency_ms=20)
    response = call(sim, CHAT, {"model": "m", "messages": MESSAGES}, headers={"x-sim-tokens": "2"})
    assert json_of(response)["usage"]["completion_tokens"] == 2
    assert response.delay == pytest.approx(0.020)
    fast = call(sim, CHAT, {"model": "m", "messages": MESSAGES}, headers={"x-sim-latency-ms": "0"})
    assert fast.delay == 0


def test_chat_content_parts_count_text_only() -> None:
    sim, _, _ = make()
    parts = [
        {"type": "text", "text": "a b"},
        {"type": "image_url", "image_url": {"url": "data:..."}},
        {"type": "text", "text": "c"},
    ]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": parts}]
    body = json_of(call(sim, CHAT, {"model": "m", "messages": messages}))
    assert body["usage"]["prompt_tokens"] == 5


def test_completions_one_choice_per_prompt() -> None:
    sim, _, _ = make(tokens=3)
    single = oai.Completion.model_validate(
        json_of(call(sim, "/v1/completions", {"model": "m", "prompt": "say a b"}))
    )
    assert single.object == "text_completion" and single.id.startswith("cmpl-")
    assert len(single.choices) == 1 and len(single.choices[0].text.split()) == 3
    batch = json_of(call(sim, "/v1/completions", {"model": "m", "prompt": ["a", "b c"]}))
    assert [c["index"] for c in batch["choices"]] == [0, 1]
    assert batch["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 6,
        "total_tokens": 9,
        "prompt_tokens_details": None,
    }
    ids = json_of(call(sim, "/v1/completions", {"model": "m", "prompt": [1, 2, 3, 4]}))
    assert ids["usage"]["prompt_tokens"] == 4
    nested = json_of(call(sim, "/v1/completions", {"model": "m", "prompt": [[1, 2], [3]]}))
    assert len(nested["choices"]) == 2


def test_embeddings_float_and_base64_agree() -> None:
    sim, _, _ = make(embedding_dimensions=4)
    request = {"model": "e", "input": ["x y", "z"]}
    floats = oai.CreateEmbeddingResponse.model_validate(
        json_of(call(sim, "/v1/embeddings", request))
    )
    encoded = json_of(call(sim, "/v1/embeddings", {**request, "encoding_format": "base64"}))
    assert floats.usage.prompt_tokens == 3
    assert [d.index for d in floats.data] == [0, 1]
    for item, b64 in zip(floats.data, encoded["data"], strict=True):
        decoded = list(struct.unpack("<4f", base64.b64decode(b64["embedding"])))
        assert decoded == item.embedding
    sized = json_of(call(sim, "/v1/embeddings", {"model": "e", "input": "q", "dimensions": 32}))
    assert len(sized["data"][0]["embedding"]) == 32


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, b"{not json", None),
        (CHAT, [1, 2], None),
        (CHAT, {"messages": MESSAGES}, "model"),
        (CHAT, {"model": "", "messages": MESSAGES}, "model"),
        (CHAT, {"model": "m"}, "messages"),
        (CHAT, {"model": "m", "messages": []}, "messages"),
        (CHAT, {"model": "m", "messages": [{"content": "no role"}]}, "messages"),
        (CHAT, {"model": "m", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        (CHAT, {"model": "m", "messages": MESSAGES, "max_tokens": True}, "max_tokens"),
        (CHAT, {"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream"),
        (
            CHAT,
            {"model": "m", "messages": MESSAGES, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": [1, "a"]}, "prompt"),
        ("/v1/embeddings", {"model": "m"}, "input"),
        (
            "/v1/embeddings",
            {"model": "m", "input": "x", "encoding_format": "hex"},
            "encoding_format",
        ),
        ("/v1/embeddings", {"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_bad_requests_get_openai_error_envelope(path: str, body: object, param: str | None) -> None:
    sim, _, _ = make()
    response = call(sim, path, body)
    assert response.status == 400
    error = json_of(response)["error"]
    assert error["type"] == "BadRequestError"
    assert error["code"] == 400
    assert error["param"] == param
    assert error["message"]


def test_strict_models_404_like_vllm() -> None:
    sim, _, _ = make(served_models=("a", "b"), strict_models=True)
    assert call(sim, CHAT, {"model": "b", "messages": MESSAGES}).status == 200
    response = call(sim, CHAT, {"model": "c", "messages": MESSAGES})
    assert response.status == 404
    assert json_of(response)["error"]["type"] == "NotFoundError"


def test_status_fault_and_error_rate() -> None:
    sim, _, _ = make(error_rate=1.0, latency_ms=5)
    response = call(sim, CHAT, {"model": "m", "messages": MESSAGES})
    assert response.status == 500
    assert response.delay == pytest.approx(0.005)  # a slow failure is still slow
    assert json_of(response)["error"]["type"] == "InternalServerError"
    sim, _, _ = make()
    limited = call(sim, CHAT, {}, headers={"x-sim-status": "429"})
    assert (limited.status, json_of(limited)["error"]["type"]) == (429, "RateLimitError")
    bad = call(sim, CHAT, {}, headers={"x-sim-status": "abc"})
    assert bad.status == 400


def test_models_health_unknown_paths() -> None:
    sim, _, faults = make(served_models=("a", "b"))
    models = oai.Model.model_validate(json_of(call(sim, "/v1/models", method="GET"))["data"][1])
    assert (models.id, models.owned_by) == ("b", "vllm")
    assert call(sim, "/health", method="GET").status == 200
    faults.health_status = 503
    assert call(sim, "/health", method="GET").status == 503
    assert call(sim, "/v1/nope", method="GET").status == 404
    wrong = call(sim, CHAT, method="GET")
    assert wrong.status == 405
    assert json_of(wrong)["error"]["code"] == 405


def test_metrics_reflect_in_flight_and_tokens() -> None:
    sim, stats, _ = make(max_num_seqs=2, tokens=4, served_models=("llama",))
    call(sim, CHAT, {"model": "llama", "messages": MESSAGES})
    keys = [stats.begin(CHAT) for _ in range(3)]  # three requests mid-generation
    text = call(sim, "/metrics", method="GET").body.decode()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples['vllm:num_requests_running{model_name="llama"}'] == "2.0"
    assert samples['vllm:num_requests_waiting{model_name="llama"}'] == "1.0"
    assert samples['vllm:kv_cache_usage_perc{model_name="llama"}'] == "1.0"
    assert samples['vllm:prompt_tokens_total{model_name="llama"}'] == "3.0"
    assert samples['vllm:generation_tokens_total{model_name="llama"}'] == "4.0"
    assert samples['vllm:request_success_total{finished_reason="stop",model_name="llama"}'] == "1.0"
    for key in keys:
        stats.end(key, "completed")
    text = call(sim, "/metrics", method="GET").body.decode()
    assert 'vllm:num_requests_running{model_name="llama"} 0.0' in text


def test_options_validated() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        OpenAIOptions(error_rate=2)
    with pytest.raises(ValueError, match="served_models"):
        OpenAIOptions(served_models=())
    rules = OpenAIOptions(error_rate=0.5, faults=(FaultRule("hang", 0, 0.1),)).fault_rules()
    assert rules == [FaultRule("status", 500, 0.5), FaultRule("hang", 0, 0.1)]


def test_context_length_400_like_vllm() -> None:
    sim, _, _ = make(max_model_len=10)
    fits = {"model": "m", "messages": [{"role": "user", "content": "w " * 6}], "max_tokens": 4}
    assert call(sim, CHAT, fits).status == 200
    over = {**fits, "max_tokens": 5}
    response = call(sim, CHAT, over)
    assert response.status == 400
    error = json_of(response)["error"]
    assert "maximum context length is 10 tokens" in error["message"]
    assert "11 tokens (6 in the messages, 5 in the completion)" in error["message"]
    prompt = {"model": "m", "prompt": "w " * 11}
    assert call(sim, "/v1/completions", prompt).status == 400
    models = json_of(call(sim, "/v1/models", method="GET"))
    assert models["data"][0]["max_model_len"] == 10


def test_prefix_cache_hits_cut_the_prefill_time() -> None:
    system = " ".join(f"s{i}" for i in range(64))  # 4 blocks of 16
    sim, stats, _ = make(prefill_tokens_per_s=1000.0, prefix_block_tokens=16)

    def ask(user: str) -> float:
        body = {
            "model": "m",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
        response = call(sim, CHAT, body)
        assert response.status == 200
        return response.delay

    cold = ask("a b c")  # 67 tokens, none cached: 67 ms of prefill
    assert cold == pytest.approx(0.067, abs=1e-6)
    section = stats.snapshot()["prefix_cache"]
    assert isinstance(section, dict)
    assert (section["hit_blocks"], section["miss_blocks"], section["miss_tokens"]) == (0, 4, 67)
    warm = ask("d e f g")  # the system prompt's 4 blocks are cached: 4 tokens to prefill
    section = stats.snapshot()["prefix_cache"]
    assert isinstance(section, dict)
    assert (section["hit_blocks"], section["hit_tokens"], section["miss_tokens"]) == (4, 64, 71)
    assert section["prefill_seconds"] == pytest.approx(0.071)  # 4 more tokens, not 68
    # Prefill is one request at a time: the second waits for what is left of the first,
    # then its own 4 ms.
    assert 0.004 <= warm <= cold + 0.004 + 1e-6
    stats.reset()
    section = stats.snapshot()["prefix_cache"]
    assert isinstance(section, dict) and section["requests"] == 0
    assert section["cached_blocks"] == 4  # a reset zeroes counters, not the cache


def test_prefix_cache_is_bounded_lru() -> None:
    sim, stats, _ = make(prefix_cache_blocks=8, prefix_block_tokens=4)
    for i in range(50):
        words = " ".join(f"t{i}w{j}" for j in range(8))  # 2 blocks each
        call(sim, CHAT, {"model": "m", "messages": [{"role": "user", "content": words}]})
        section = stats.snapshot()["prefix_cache"]
        assert isinstance(section, dict) and section["cached_blocks"] <= 8


def test_lora_report_names_the_adapters_of_unanswered_requests() -> None:
    """With --max-loras, /metrics reports vLLM's vllm:lora_requests_info: the adapters of
    requests not answered yet, the first max_loras distinct ones running, others waiting;
    the gateway's parser reads it back."""
    sim, _, _ = make(max_loras=1, lora_modules=("sql", "law"))
    slow = {"x-sim-latency-ms": "60000"}  # answered in a minute: still in the batch
    for model in ("sql", "base", "law", "sql"):
        call(sim, CHAT, {"model": model, "messages": MESSAGES}, headers=slow)
    call(sim, CHAT, {"model": "law", "messages": MESSAGES})  # answered at once: gone
    text = call(sim, "/metrics", method="GET").body.decode()
    load = parse_vllm_metrics(text)
    assert (load.lora_running, load.lora_waiting, load.max_loras) == (("sql",), ("law",), 1)
    assert 'running_lora_adapters="sql",waiting_lora_adapters="law"' in text
    # Without --max-loras (LoRA not enabled) there is no such series.
    plain, _, _ = make(lora_modules=("sql",))
    call(plain, CHAT, {"model": "sql", "messages": MESSAGES}, headers=slow)
    assert "lora_requests_info" not in call(plain, "/metrics", method="GET").body.decode()
    with pytest.raises(ValueError, match="max_loras"):
        OpenAIOptions(max_loras=-1)
