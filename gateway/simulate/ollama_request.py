"""Reading Ollama request bodies the way Ollama's server does.

Ollama binds each body into a Go struct first (gin's `ShouldBindJSON`), so a field of
the wrong JSON type fails with Go's unmarshal message and 400, `null` means "absent",
and only then are values checked. These helpers keep that order and those messages, so
a client sees the same errors from the simulator as from Ollama.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeGuard

import orjson

Body = dict[str, Any]

DEFAULT_TAG: Final = "latest"

# A Go duration string (`ParseDuration`), or a bare number: `keep_alive: "0"`, `"0s"`,
# `"0.0m"` all mean "unload now".
_DURATION: Final = re.compile(r"\s*[+-]?(\d*\.?\d*)\s*(ns|us|µs|ms|s|m|h)?\s*")


class InvalidRequest(Exception):
    """A request Ollama rejects; rendered as `{"error": message}` with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_body(raw: bytes, struct: str) -> Body:
    """The JSON object of a request body bound to Go type `api.<struct>`."""
    if not raw.strip():
        raise InvalidRequest("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"json: cannot unmarshal {_json_kind(body)} into Go value of type api.{struct}"
        )
    return body


def type_error(struct: str, field: str, value: object, go_type: str) -> InvalidRequest:
    """Go's message for a field of the wrong JSON type."""
    return InvalidRequest(
        f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
        f"{struct}.{field} of type {go_type}"
    )


def is_int(value: object) -> TypeGuard[int]:
    """A JSON integer (not a bool, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool)


def model_name(body: Body, struct: str, field: str = "model") -> str:
    """The requested model name; 400 `model is required` when absent or empty."""
    model = string_field(body, struct, field)
    if not model:
        raise InvalidRequest("model is required")
    return model


def string_field(body: Body, struct: str, field: str) -> str:
    """A string field; absent or null is the empty string, as in Go."""
    value = body.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise type_error(struct, field, value, "string")
    return value


def bool_field(body: Body, struct: str, field: str) -> bool:
    """A bool field; absent or null is false."""
    value = body.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise type_error(struct, field, value, "bool")
    return value


def stream_flag(body: Body, struct: str) -> bool:
    """`stream` is a `*bool` in Ollama: absent or null means stream (the default)."""
    value = body.get("stream")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise type_error(struct, "stream", value, "bool")
    return value


def options(body: Body, struct: str) -> dict[str, Any]:
    """The `options` map (Modelfile parameters)."""
    value = body.get("options")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise type_error(struct, "options", value, "map[string]interface {}")
    return value


def num_predict(opts: dict[str, Any]) -> int | None:
    """`options.num_predict` as a token limit; None when unlimited (absent, -1, -2, 0).

    Ollama converts options after binding, when it schedules the model, and answers
    a bad one with 500, not 400; so does the simulator.
    """
    value = opts.get("num_predict")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest('option "num_predict" must be of type integer', status=500)
    limit = int(value)
    return limit if limit > 0 else None


def chat_texts(body: Body) -> list[str]:
    """The contents of `messages`, in order (empty when there are none)."""
    messages = body.get("messages")
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise type_error("ChatRequest", "messages", messages, "[]api.Message")
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            raise type_error("ChatRequest", "messages", message, "api.Message")
        content = message.get("content")
        if isinstance(content, str) and isinstance(message.get("role"), str):
            texts.append(content)  # the usual message, checked in two isinstance calls
            continue
        string_field(message, "ChatRequest.messages", "role")
        texts.append(string_field(message, "ChatRequest.messages", "content"))
    return texts


def int_list(body: Body, struct: str, field: str) -> list[int]:
    """A list of integers (`context` token ids)."""
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise type_error(struct, field, value, "[]int")
    for item in value:
        if not is_int(item):
            raise type_error(struct, field, item, "int")
    return value


def embed_inputs(body: Body) -> list[str]:
    """`input` of `/api/embed`: a string or a list of strings; an empty string or an
    absent input embeds nothing."""
    value = body.get("input")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise InvalidRequest("invalid input type")


def dimensions(body: Body) -> int:
    """`dimensions` of `/api/embed`; 0 (absent, or not positive) keeps the model's."""
    value = body.get("dimensions")
    if value is None:
        return 0
    if not is_int(value):
        raise type_error("EmbedRequest", "dimensions", value, "int")
    return max(value, 0)


def unloads(body: Body, struct: str) -> bool:
    """`keep_alive` is zero: a request with nothing to generate unloads the model."""
    value = body.get("keep_alive")
    if value is None:
        return False
    if is_int(value) or isinstance(value, float):
        return value == 0
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None or match.group(1) in ("", "."):
            raise InvalidRequest(f'time: invalid duration "{value}"')
        return float(match.group(1)) == 0
    raise type_error(struct, "keep_alive", value, "api.Duration")


def with_tag(name: str) -> str:
    """`name:tag`, with Ollama's default tag when the name has none (`llama3.2` is
    `llama3.2:latest`; a `host:port/` prefix is not a tag)."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:{DEFAULT_TAG}"


def canonical(name: str) -> str:
    """The key two names of the same model share (Ollama matches names ignoring case)."""
    return with_tag(name).lower()


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"
