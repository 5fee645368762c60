"""Ollama wire format: the JSON bodies and NDJSON lines the Ollama simulator writes.

Checked against Ollama's server (`server/routes.go`, `api/types.go`) and the `ollama`
Python client's `_types.py`:

- key order follows the Go structs (`model`, `created_at`, `message` / `response`,
  `done_reason`, `done`, then the metrics), and metrics that are zero are left out, as
  Go's `omitempty` does;
- a stream is `application/x-ndjson`, one JSON object per line, each line flushed on
  its own; whole objects and errors are `application/json; charset=utf-8`, as gin's
  `c.JSON` writes them; errors are `{"error": "..."}`;
- timestamps are Go's `RFC3339Nano` in UTC (`2024-09-12T21:17:29.110811Z`), durations
  are nanoseconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import orjson

from gateway.simulate.deferred import EventStream

NDJSON_CONTENT_TYPE: Final = b"application/x-ndjson"
JSON_CONTENT_TYPE: Final = b"application/json; charset=utf-8"
TEXT_CONTENT_TYPE: Final = b"text/plain; charset=utf-8"

RUNNING: Final = b"Ollama is running"
"""What `GET /` answers, the probe scripts and health checks use."""

# gin's own answers for unknown routes and wrong methods (plain text, not JSON).
NOT_FOUND: Final = b"404 page not found"
METHOD_NOT_ALLOWED: Final = b"405 method not allowed"


def error_body(message: str) -> bytes:
    """Ollama's error object: `{"error": "..."}` (the client's `ResponseError.error`)."""
    return orjson.dumps({"error": message})


def rfc3339(ns: int) -> str:
    """A UTC instant in nanoseconds as Go's `time.RFC3339Nano` writes it (trailing
    zeros of the fraction dropped)."""
    return Rfc3339()(ns)


class Rfc3339:
    """`rfc3339` for a stream of nearby instants: the date and time of day are formatted
    once per second (most of the cost), only the fraction per call."""

    __slots__ = ("_base", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._base = ""

    def __call__(self, ns: int) -> str:
        """Format `ns` (nanoseconds since the epoch, UTC)."""
        seconds, fraction = divmod(ns, 1_000_000_000)
        if seconds != self._second:
            self._base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._second = seconds
        if fraction:
            return f"{self._base}.{fraction:09d}".rstrip("0") + "Z"
        return self._base + "Z"


class Envelope(NamedTuple):
    """Fields every object of one response shares."""

    model: str
    created_at: str


class Completion(NamedTuple):
    """What the simulated model produced: tokens and why it stopped (`stop`, `length`)."""

    tokens: list[str]
    done_reason: str


class Metrics(NamedTuple):
    """The statistics of a final object; durations in nanoseconds."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int

    def fields(self) -> dict[str, int]:
        """The non-zero metrics, in Ollama's order (Go's `omitempty`)."""
        if all(self):  # the usual case, on the hot path: no filtering
            return dict(zip(self._fields, self, strict=True))
        return {name: value for name, value in zip(self._fields, self, strict=True) if value}


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


def chat_response(env: Envelope, completion: Completion, metrics: Metrics) -> bytes:
    """A non-streamed `/api/chat` answer: the whole message and the final statistics."""
    return orjson.dumps(
        {
            "model": env.model,
            "created_at": env.created_at,
            "message": _assistant("".join(completion.tokens)),
            "done_reason": completion.done_reason,
            "done": True,
            **metrics.fields(),
        }
    )


def chat_stream(env: Envelope, completion: Completion, metrics: Metrics) -> EventStream:
    """`/api/chat` NDJSON: one line per token (`done: false`), then the final line with
    an empty message, `done_reason`, `done: true` and the statistics."""
    head = _head(env) + b',"message":{"role":"assistant","content":'
    content = _lines(head, completion.tokens, b'},"done":false}\n')
    final = {
        "model": env.model,
        "created_at": env.created_at,
        "message": _assistant(""),
        "done_reason": completion.done_reason,
        "done": True,
        **metrics.fields(),
    }
    return EventStream(NDJSON_CONTENT_TYPE, [], content, [orjson.dumps(final) + b"\n"])


def generate_response(
    env: Envelope, completion: Completion, context: list[int] | None, metrics: Metrics
) -> bytes:
    """A non-streamed `/api/generate` answer; `context` is left out in raw mode."""
    return orjson.dumps(
        _generate_final(env, "".join(completion.tokens), completion, context, metrics)
    )


def generate_stream(
    env: Envelope, completion: Completion, context: list[int] | None, metrics: Metrics
) -> EventStream:
    """`/api/generate` NDJSON: one `response` fragment per line, then the final line
    (empty `response`, `context`, statistics)."""
    content = _lines(_head(env) + b',"response":', completion.tokens, b',"done":false}\n')
    final = orjson.dumps(_generate_final(env, "", completion, context, metrics)) + b"\n"
    return EventStream(NDJSON_CONTENT_TYPE, [], content, [final])


def _generate_final(
    env: Envelope,
    response: str,
    completion: Completion,
    context: list[int] | None,
    metrics: Metrics,
) -> dict[str, object]:
    body: dict[str, object] = {
        "model": env.model,
        "created_at": env.created_at,
        "response": response,
        "done": True,
        "done_reason": completion.done_reason,
    }
    if context is not None:
        body["context"] = context
    body.update(metrics.fields())
    return body


def load_response(env: Envelope, chat: bool, reason: str) -> bytes:
    """The answer to a request with nothing to generate: Ollama loads (`load`) or
    unloads (`unload`, with `keep_alive: 0`) the model and says so in one object."""
    body: dict[str, object] = {"model": env.model, "created_at": env.created_at}
    if chat:
        body.update(message=_assistant(""), done_reason=reason, done=True)
    else:
        body.update(response="", done=True, done_reason=reason)
    return orjson.dumps(body)


def embed_response(model: str, vectors: list[list[float]], metrics: Metrics) -> bytes:
    """`/api/embed`: one vector per input, with the durations and prompt token count."""
    body: dict[str, object] = {"model": model, "embeddings": vectors}
    if vectors:
        fields = metrics.fields()
        body.update(
            (name, fields[name])
            for name in ("total_duration", "load_duration", "prompt_eval_count")
            if name in fields
        )
    return orjson.dumps(body)


def embedding_response(vector: list[float]) -> bytes:
    """The legacy `/api/embeddings` answer: `{"embedding": [...]}`."""
    return orjson.dumps({"embedding": vector})


def version_response(version: str) -> bytes:
    """`GET /api/version`."""
    return orjson.dumps({"version": version})


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What `/api/tags`, `/api/show` and `/api/ps` say about one served model."""

    name: str
    """Full name with its tag, e.g. `llama3.2:latest`."""
    digest: str
    size: int
    modified_at: str
    context_length: int
    embedding_length: int
    family: str = "sim"
    parameter_size: str = "1B"
    quantization_level: str = "Q4_K_M"

    def details(self) -> dict[str, object]:
        """The `details` object (`ModelDetails`)."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


def tags_response(cards: Sequence[ModelCard]) -> bytes:
    """`GET /api/tags`: the models available locally."""
    return orjson.dumps(
        {
            "models": [
                {
                    "name": card.name,
                    "model": card.name,
                    "modified_at": card.modified_at,
                    "size": card.size,
                    "digest": card.digest,
                    "details": card.details(),
                }
                for card in cards
            ]
        }
    )


def ps_response(cards: Sequence[ModelCard], expires_at: str) -> bytes:
    """`GET /api/ps`: the models loaded in memory (a simulator keeps all of them warm)."""
    return orjson.dumps(
        {
            "models": [
                {
                    "name": card.name,
                    "model": card.name,
                    "size": card.size,
                    "digest": card.digest,
                    "details": card.details(),
                    "expires_at": expires_at,
                    "size_vram": card.size,
                    "context_length": card.context_length,
                }
                for card in cards
            ]
        }
    )


def show_response(card: ModelCard) -> bytes:
    """`POST /api/show`. `model_info` is always present: the Python client requires it,
    and Ollama sends an empty map rather than none."""
    family = card.family
    return orjson.dumps(
        {
            "modelfile": (
                '# Modelfile generated by "ollama show"\n'
                f"# FROM {card.name}\n\nFROM switchyard-sim/{card.name}\n"
            ),
            "parameters": f"num_ctx                        {card.context_length}",
            "template": "{{ .Prompt }}",
            "details": card.details(),
            "model_info": {
                "general.architecture": family,
                "general.basename": card.name.partition(":")[0],
                "general.parameter_count": 1_000_000_000,
                f"{family}.context_length": card.context_length,
                f"{family}.embedding_length": card.embedding_length,
            },
            "capabilities": ["completion", "embedding"],
            "modified_at": card.modified_at,
        }
    )


def _head(env: Envelope) -> bytes:
    """`{"model":...,"created_at":"..."` serialised once per response; each line splices
    one small token encoding in instead of dumping a whole object."""
    return orjson.dumps({"model": env.model, "created_at": env.created_at})[:-1]


def _lines(head: bytes, tokens: Sequence[str], tail: bytes) -> list[bytes]:
    dumps = orjson.dumps
    return [head + dumps(token) + tail for token in tokens]
