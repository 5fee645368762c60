"""Feature extraction: request bodies of each protocol into rows of named values.

Pure functions of the parsed JSON body, run off the request path (in the gateway's
background sender), stdlib only. Every extractor is total: a missing or oddly typed
field gives `None` (a missing value in the window), never an exception, because client
input is arbitrary.

- OpenAI and Ollama (chat, completions, generate, embeddings): text descriptors of the
  prompt or messages (`describe_text`) and request parameters.
- KServe v2 / Open Inference Protocol: each input tensor row is one sample; each
  element of the row one column, `NAME[INDEX]` unless the policy names it.
- JSON services (BentoML): fields picked by simple paths, `inputs.amount`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.controlplane.policy.driftspec import TEXT_DESCRIPTORS, TEXT_PROTOCOLS, FeatureSpec
from gateway.controlplane.policy.fields import split_path

Value = float | str | None
Row = dict[str, Value]
Extractor = Callable[[Mapping[str, Any]], list[Row]]

MAX_ROWS_PER_REQUEST = 256  # a huge tensor batch must not flood the window
MAX_COLUMNS = 256  # default tensor columns: elements past this are not features
MAX_TEXT = 256  # categorical values are cut to this many characters
# Characters counted by deleting them from the ASCII bytes of the text: bytes.translate
# runs in C over a 256-entry table, ~10x faster than a str.translate dict or a loop.
_DIGITS = b"0123456789"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _message_text(content: object, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):  # OpenAI content parts: [{"type": "text", ...}]
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                out.append(part["text"])


def prompt_texts(body: Mapping[str, Any]) -> tuple[list[str], int]:
    """The texts a request sends to the model, and how many messages or prompts."""
    texts: list[str] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                _message_text(message.get("content"), texts)
        return texts, len(messages)
    for field in ("prompt", "input"):  # completions/generate; embeddings/embed
        value = body.get(field)
        if isinstance(value, str):
            return [value], 1
        if isinstance(value, list):
            texts = [v for v in value if isinstance(v, str)]
            return texts, len(value)
    system = body.get("system")  # Ollama generate's system prompt
    if isinstance(system, str):
        return [system], 1
    return [], 0


def describe_text(body: Mapping[str, Any]) -> Row:
    """Every text descriptor of an OpenAI or Ollama request body."""
    texts, count = prompt_texts(body)
    joined = "\n".join(texts)
    chars = len(joined)
    words = joined.split()
    shares: tuple[Value, Value, Value] = (None, None, None)
    if chars:
        ascii_only = joined.encode("ascii", "ignore")
        plain = len(ascii_only)
        digits = plain - len(ascii_only.translate(None, _DIGITS))
        upper = plain - len(ascii_only.translate(None, _UPPER))  # ASCII capitals only
        shares = ((chars - plain) / chars, digits / chars, upper / chars)
    options = body.get("options")  # Ollama puts sampling parameters here
    params = options if isinstance(options, Mapping) else body
    max_tokens = params.get("max_tokens", params.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = params.get("num_predict")
    return {
        "message_count": float(count),
        "prompt_chars": float(chars),
        "prompt_words": float(len(words)),
        "mean_word_length": (sum(map(len, words)) / len(words)) if words else None,
        "non_ascii_share": shares[0],
        "digit_share": shares[1],
        "uppercase_share": shares[2],
        "max_tokens": _number(max_tokens),
        "temperature": _number(params.get("temperature")),
    }


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def scalar(value: object) -> Value:
    """A JSON value as a window value: numbers as floats, strings and booleans as
    (short) categories, anything else missing."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        return value[:MAX_TEXT]
    return None


def value_at(body: object, keys: Sequence[str | int]) -> Value:
    """The value at a split simple path (`split_path`), or None."""
    node = body
    for key in keys:
        if isinstance(key, int):
            if not isinstance(node, list) or key >= len(node):
                return None
            node = node[key]
        else:
            if not isinstance(node, Mapping):
                return None
            node = node.get(key)
    return scalar(node)


def _flatten(data: object, out: list[object]) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out)
    else:
        out.append(data)


def tensor_rows(body: Mapping[str, Any]) -> dict[str, list[list[object]]]:
    """Each KServe v2 input tensor as rows: shape [N, ...] is N rows of the remaining
    elements; shape [K] (no batch dimension) is one row of K elements."""
    inputs = body.get("inputs")
    out: dict[str, list[list[object]]] = {}
    if not isinstance(inputs, list):
        return out
    for tensor in inputs:
        if not isinstance(tensor, Mapping) or not isinstance(tensor.get("name"), str):
            continue
        flat: list[object] = []
        _flatten(tensor.get("data"), flat)
        shape = tensor.get("shape")
        batch = 1
        if isinstance(shape, list) and len(shape) > 1 and isinstance(shape[0], int):
            batch = max(1, shape[0])
        width = max(1, len(flat) // batch)
        rows = min(batch, MAX_ROWS_PER_REQUEST)
        out[tensor["name"]] = [flat[r * width : (r + 1) * width] for r in range(rows)]
    return out


def text_extractor(features: Sequence[FeatureSpec]) -> Extractor:
    """OpenAI / Ollama: descriptors (all by default) plus any body paths."""
    descriptors = [(f.column, str(f.descriptor)) for f in features if f.descriptor]
    paths = [(f.column, split_path(f.path)) for f in features if f.path]
    if not features:
        descriptors = [(name, name) for name in TEXT_DESCRIPTORS]

    def extract(body: Mapping[str, Any]) -> list[Row]:
        row: Row = {}
        if descriptors:
            described = describe_text(body)
            row = {column: described[name] for column, name in descriptors}
        for column, keys in paths:
            row[column] = value_at(body, keys)
        return [row]

    return extract


def tensor_extractor(features: Sequence[FeatureSpec]) -> Extractor:
    """KServe v2: one row per tensor row; named elements, or every element by default.
    Body paths given as well are copied onto every row of the request."""
    elements = [(f.column, str(f.tensor), int(f.index or 0)) for f in features if f.tensor]
    paths = [(f.column, split_path(f.path)) for f in features if f.path]

    def extract(body: Mapping[str, Any]) -> list[Row]:
        tensors = tensor_rows(body)
        count = max((len(rows) for rows in tensors.values()), default=0)
        shared: Row = {column: value_at(body, keys) for column, keys in paths}
        out: list[Row] = []
        for r in range(max(count, 1 if shared else 0)):
            row = dict(shared)
            if features:
                for column, name, index in elements:
                    rows = tensors.get(name)
                    row[column] = (
                        scalar(rows[r][index])
                        if rows and r < len(rows) and index < len(rows[r])
                        else None
                    )
            else:
                for name, rows in tensors.items():
                    if r < len(rows):
                        for i, value in enumerate(rows[r][:MAX_COLUMNS]):
                            row[f"{name}[{i}]"] = scalar(value)
            out.append(row)
        return out

    return extract


def json_extractor(features: Sequence[FeatureSpec]) -> Extractor:
    """JSON services: fields by path, or every top-level scalar field by default."""
    paths = [(f.column, split_path(f.path)) for f in features if f.path]

    def extract(body: Mapping[str, Any]) -> list[Row]:
        if paths:
            return [{column: value_at(body, keys) for column, keys in paths}]
        row = {
            str(key): scalar(value)
            for key, value in list(body.items())[:MAX_COLUMNS]
            if not isinstance(value, (dict, list)) and value is not None
        }
        return [row]

    return extract


def build_extractor(protocol: str, features: Sequence[FeatureSpec]) -> Extractor:
    """The extractor of a route: by its protocol, with the policy's features."""
    if protocol in TEXT_PROTOCOLS:
        return text_extractor(features)
    if protocol == "kserve-v2":
        return tensor_extractor(features)
    return json_extractor(features)
