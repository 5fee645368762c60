"""OpenAI / vLLM wire format: the JSON bodies, SSE events and metrics the simulator writes.

Field names follow the `openai` package's types and vLLM's server (vLLM extras such as
`stop_reason` are included where vLLM sends them), so real clients parse every byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NamedTuple

import orjson

from gateway.simulate.deferred import EventStream

SSE_CONTENT_TYPE: Final = b"text/event-stream; charset=utf-8"
METRICS_CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
SSE_DONE: Final = b"data: [DONE]\n\n"

# The openai SDK picks its exception class from the status; the `type` names match it.
_ERROR_TYPES: Final[Mapping[int, str]] = MappingProxyType(
    {
        400: "BadRequestError",
        401: "AuthenticationError",
        403: "PermissionDeniedError",
        404: "NotFoundError",
        405: "MethodNotAllowedError",
        409: "ConflictError",
        413: "RequestEntityTooLargeError",
        422: "UnprocessableEntityError",
        429: "RateLimitError",
    }
)


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """vLLM's `ErrorResponse`: `{"error": {"message", "type", "param", "code"}}`."""
    err_type = _ERROR_TYPES.get(
        status, "InternalServerError" if status >= 500 else "BadRequestError"
    )
    return orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    )


class Completion(NamedTuple):
    """What the simulated model produced for one choice."""

    tokens: list[str]
    finish_reason: str


class Envelope(NamedTuple):
    """Fields shared by every object of one response."""

    id: str
    created: int
    model: str


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    """The `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def chat_completion(env: Envelope, choice: Completion, prompt_tokens: int) -> bytes:
    """A `chat.completion` object."""
    message = {"role": "assistant", "content": "".join(choice.tokens), "tool_calls": []}
    return orjson.dumps(
        {
            "id": env.id,
            "object": "chat.completion",
            "created": env.created,
            "model": env.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": choice.finish_reason,
                    "stop_reason": None,
                }
            ],
            "usage": usage(prompt_tokens, len(choice.tokens)),
        }
    )


def text_completion(env: Envelope, choices: Sequence[Completion], prompt_tokens: int) -> bytes:
    """A `text_completion` object, one choice per prompt."""
    return orjson.dumps(
        {
            "id": env.id,
            "object": "text_completion",
            "created": env.created,
            "model": env.model,
            "choices": [
                {
                    "index": index,
                    "text": "".join(choice.tokens),
                    "logprobs": None,
                    "finish_reason": choice.finish_reason,
                    "stop_reason": None,
                }
                for index, choice in enumerate(choices)
            ],
            "usage": usage(prompt_tokens, sum(len(c.tokens) for c in choices)),
        }
    )


class _Sse:
    """Renders the `data: {...}\\n\\n` events of one stream around a shared envelope."""

    __slots__ = ("_close", "_envelope", "_open")

    def __init__(self, env: Envelope, obj: str, include_usage: bool) -> None:
        # Serialise the envelope once and splice each choice in: a token event is one
        # small dumps instead of a whole object.
        head = orjson.dumps(
            {"id": env.id, "object": obj, "created": env.created, "model": env.model}
        )[:-1]
        self._envelope = b"data: " + head
        self._open = self._envelope + b',"choices":['
        # OpenAI sends `"usage": null` on every chunk when usage was asked for.
        self._close = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"

    def choice(self, choice: dict[str, object]) -> bytes:
        return self._open + orjson.dumps(choice) + self._close

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        body = orjson.dumps(usage(prompt_tokens, completion_tokens))
        return self._envelope + b',"choices":[],"usage":' + body + b"}\n\n"


def chat_stream(
    env: Envelope, choice: Completion, prompt_tokens: int, include_usage: bool
) -> EventStream:
    """`chat.completion.chunk` events: role, one per token, finish, [usage], [DONE]."""
    sse = _Sse(env, "chat.completion.chunk", include_usage)
    lead = [
        sse.choice(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        )
    ]
    content = [
        sse.choice(
            {"index": 0, "delta": {"content": token}, "logprobs": None, "finish_reason": None}
        )
        for token in choice.tokens
    ]
    tail = [
        sse.choice(
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": choice.finish_reason}
        )
    ]
    if include_usage:
        tail.append(sse.usage(prompt_tokens, len(choice.tokens)))
    tail.append(SSE_DONE)
    return EventStream(SSE_CONTENT_TYPE, lead, content, tail)


def text_stream(
    env: Envelope, choices: Sequence[Completion], prompt_tokens: int, include_usage: bool
) -> EventStream:
    """Streamed `text_completion` events: one per token (choice by choice), finish events,
    [usage], [DONE]."""
    sse = _Sse(env, "text_completion", include_usage)
    content = [
        sse.choice({"index": index, "text": token, "logprobs": None, "finish_reason": None})
        for index, choice in enumerate(choices)
        for token in choice.tokens
    ]
    tail = [
        sse.choice(
            {
                "index": index,
                "text": "",
                "logprobs": None,
                "finish_reason": choice.finish_reason,
                "stop_reason": None,
            }
        )
        for index, choice in enumerate(choices)
    ]
    if include_usage:
        tail.append(sse.usage(prompt_tokens, sum(len(c.tokens) for c in choices)))
    tail.append(SSE_DONE)
    return EventStream(SSE_CONTENT_TYPE, [], content, tail)


def embeddings(env: Envelope, vectors: Sequence[list[float] | str], prompt_tokens: int) -> bytes:
    """An embeddings `list`; each vector is floats or base64 of little-endian float32."""
    return orjson.dumps(
        {
            "id": env.id,
            "object": "list",
            "created": env.created,
            "model": env.model,
            "data": [
                {"index": index, "object": "embedding", "embedding": vector}
                for index, vector in enumerate(vectors)
            ],
            "usage": usage(prompt_tokens, 0),
        }
    )


def models_list(models: Sequence[str], created: int, max_model_len: int) -> bytes:
    """`GET /v1/models`: vLLM's model cards, one per served model name."""
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "id": model,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": model,
                    "parent": None,
                    "max_model_len": max_model_len,
                }
                for model in models
            ],
        }
    )


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What `/metrics` reports, in vLLM's metric names."""

    model: str
    running: int
    waiting: int
    kv_cache_usage: float
    prompt_tokens: int
    generation_tokens: int
    finished: Mapping[str, int]


def vllm_metrics(load: EngineLoad) -> bytes:
    """Prometheus text exposition with the vLLM gauges autoscalers read."""
    label = f'model_name="{_escape_label(load.model)}"'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{label}}} {float(load.running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{label}}} {float(load.waiting)}",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{label}}} {load.kv_cache_usage}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{label}}} {float(load.prompt_tokens)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{label}}} {float(load.generation_tokens)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
    ]
    for reason in sorted(load.finished):
        count = float(load.finished[reason])
        lines.append(f'vllm:request_success_total{{finished_reason="{reason}",{label}}} {count}')
    return ("\n".join(lines) + "\n").encode()


def lora_info(max_loras: int, running: list[str], waiting: list[str], at: float) -> bytes:
    """vLLM's `vllm:lora_requests_info` (with --enable-lora): the adapters in the batch
    and queued, comma-joined, a gauge set to the time of the update."""
    labels = (
        f'max_lora="{max_loras}",running_lora_adapters="{_escape_label(",".join(running))}",'
        f'waiting_lora_adapters="{_escape_label(",".join(waiting))}"'
    )
    return (
        "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
        "# TYPE vllm:lora_requests_info gauge\n"
        f"vllm:lora_requests_info{{{labels}}} {at}\n"
    ).encode()


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
