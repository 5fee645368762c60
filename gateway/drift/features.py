"""Feature extraction: request bodies of each protocol into rows of named values.

Pure functions of the parsed JSON body, run off the request path (in the gateway's
background sender), stdlib only. Compiled with the request path
(`gateway.native.loader.HOT_MODULES`, the sender's batch runs on the same event loop):
it must stay mypyc-compatible; bodies are typed `Mapping`, so a compiled `get` still
calls the override of a dict subclass (`GrpcInferBody`, `BinaryInferBody`).

Every extractor is total: a missing or oddly typed field gives `None` (a missing value in
the window), never an exception, because client input is arbitrary.

- OpenAI and Ollama (chat, completions, generate, embeddings): text descriptors of the
  prompt or messages (`describe_text`) and request parameters.
- KServe v2 / Open Inference Protocol: each input tensor row is one sample; each
  element of the row one column, `NAME[INDEX]` unless the policy names it.
- JSON services (BentoML): fields picked by simple paths, `inputs.amount`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from gateway.controlplane.policy.driftspec import TEXT_DESCRIPTORS, TEXT_PROTOCOLS, FeatureSpec
from gateway.controlplane.policy.fields import split_path

Value = float | str | None
Row = dict[str, Value]
Extractor = Callable[[Mapping[str, Any]], list[Row]]

MAX_ROWS_PER_REQUEST = 256  # a huge tensor batch must not flood the window
MAX_COLUMNS = 256  # default tensor columns: elements past this are not features
MAX_TEXT = 256  # categorical values are cut to this many characters
# The ASCII bytes of the text are mapped to classes with bytes.translate (C, one table
# lookup a byte, no deletions) and the classes counted with bytes.count (C): digits
# and capitals; and blanks, the characters `str.split()` splits on (str.isspace: \t \n
# \v \f \r, the separators \x1c-\x1f, space), versus the rest, which make the words.
# (Final: compiled, they are C constants, not looked up in the module's dict each time)
_DIGIT: Final = b"0"
_UPPER: Final = b"A"
_BLANK: Final = b" "
_OTHER: Final = b"."
_CLASSES: Final = bytes(
    _DIGIT[0] if 48 <= c <= 57 else _UPPER[0] if 65 <= c <= 90 else _OTHER[0] for c in range(256)
)
_BLANKS: Final = bytes(_BLANK[0] if c < 128 and chr(c).isspace() else _OTHER[0] for c in range(256))
_WORD_START: Final = _BLANK + _OTHER  # a word starts after a blank (or at the start)


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
    shares: tuple[Value, Value, Value] = (None, None, None)
    words = letters = 0  # words, and the characters in them
    if chars:
        ascii_only = joined.encode("ascii", "ignore")
        plain = len(ascii_only)
        classes = ascii_only.translate(_CLASSES)
        digits = classes.count(_DIGIT)
        upper = classes.count(_UPPER)  # ASCII capitals only
        shares = ((chars - plain) / chars, digits / chars, upper / chars)
        if plain == chars:
            # ASCII only: the words are the runs of non-blanks, as `split()` would
            # give them, counted without making them.
            blanks = ascii_only.translate(_BLANKS)
            letters = chars - blanks.count(_BLANK)
            words = blanks.count(_WORD_START) + int(not blanks.startswith(_BLANK))
        else:  # Unicode whitespace (NBSP, em space...) splits words too
            split = joined.split()
            words = len(split)
            letters = sum(map(len, split))
    options = body.get("options")  # Ollama puts sampling parameters here
    # (None first: an isinstance check against the Mapping ABC costs more than this)
    params = options if options is not None and isinstance(options, Mapping) else body
    max_tokens = params.get("max_tokens", params.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = params.get("num_predict")
    return {
        "message_count": float(count),
        "prompt_chars": float(chars),
        "prompt_words": float(words),
        "mean_word_length": (letters / words) if words else None,
        "non_ascii_share": shares[0],
        "digit_share": shares[1],
        "uppercase_share": shares[2],
        "max_tokens": _number(max_tokens),
        "temperature": _number(params.get("temperature")),
    }


def _number(value: object) -> float | None:
    # One type at a time: compiled, each is a C type check (a tuple of types is not).
    if isinstance(value, float):
        number = float(value)  # a plain float, even of a subclass
    elif isinstance(value, int) and not isinstance(value, bool):
        number = float(value)  # OverflowError past 1.8e308, as it always did
    else:
        return None
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

    # Every descriptor under its own name, in `describe_text`'s order (the default):
    # its row is the row, no copy.
    whole = descriptors == [(name, name) for name in TEXT_DESCRIPTORS]

    def extract(body: Mapping[str, Any]) -> list[Row]:
        row: Row = {}
        if whole:
            row = describe_text(body)
        elif descriptors:
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
