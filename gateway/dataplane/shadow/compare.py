"""Compare a shadow's answer with the primary's: pure functions of two responses.

What "agree" means depends on what the route serves, so one comparison per kind:

- KServe v2 tensors (`outputs`): per output, the same shape and every element equal
  within the numeric tolerance (exact for strings and booleans); agree when all do.
- JSON classifiers (BentoML and plain services): the predicted labels are equal; the
  probability delta is reported beside it.
- LLM generations (OpenAI and Ollama, whole or streamed as SSE/NDJSON): the token-set
  overlap (Jaccard) of the two texts, agree when at least `min_similarity`; and the
  length ratio. Streams are assembled from their chunks first.
- Embeddings: numeric tolerance per element, cosine similarity reported.

Tensors are compared in `shadowtensors`, JSON answers in `shadowlabels`; the result
type and tolerance are in `shadowverdict`. Either side answering an error status
agrees only if both answered the same status.
A body that cannot be read as its protocol makes the pair `uncomparable`, never an
exception: a shadow returning garbage is a result, not a failure of the gateway.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any, Final

import orjson

from gateway.dataplane.shadow.labels import compare_json
from gateway.dataplane.shadow.tensors import compare_tensors
from gateway.dataplane.shadow.verdict import EXCERPT_CHARS, Comparison, Tolerance, close, is_number

__all__ = ["Comparison", "Tolerance", "compare"]

_WORD = re.compile(r"\w+")
# ASCII to lower-case word characters, everything else to a blank (see `words`).
_ASCII_WORDS: Final = {
    i: (chr(i).lower() if chr(i).isalnum() or chr(i) == "_" else " ") for i in range(128)
}
_EMBEDDING_PATHS = frozenset({b"/v1/embeddings", b"/api/embed", b"/api/embeddings"})
_SAME_TEXT = "jaccard 1.000"  # the detail of two equal texts, not formatted each time


def compare(
    protocol: str,
    path: bytes,
    primary_status: int,
    primary_body: bytes,
    shadow_status: int,
    shadow_body: bytes,
    tolerance: Tolerance,
    *,
    limit: int = 1 << 20,
) -> Comparison:
    """Compare two answers to the same request on a route speaking `protocol`.

    `limit` bounds how much a compressed body may inflate to (a gzip bomb from a
    misbehaving shadow must not cost memory).
    """
    if primary_status // 100 != 2 or shadow_status // 100 != 2:
        same = primary_status == shadow_status
        detail = f"status {primary_status} (primary) vs {shadow_status} (shadow)"
        return Comparison("agree" if same else "disagree", "status", detail=detail)
    primary, shadow = _plain(primary_body, limit), _plain(shadow_body, limit)
    if primary is None or shadow is None:
        return Comparison("uncomparable", "json", detail="a body did not decompress")
    if protocol in ("openai", "ollama"):
        if path in _EMBEDDING_PATHS:
            return compare_embeddings(primary, shadow, tolerance)
        return compare_llm(primary, shadow, tolerance)
    if protocol == "kserve-v2":
        return compare_tensors(primary, shadow, tolerance)
    return compare_json(primary, shadow, tolerance)


# LLM generations ------------------------------------------------------------------------


def compare_llm(primary: bytes, shadow: bytes, tolerance: Tolerance) -> Comparison:
    """Token-set Jaccard and length ratio of two generations (any OpenAI/Ollama shape)."""
    a = llm_text(primary)
    # The same bytes (a deterministic shadow, or one serving the same model) hold the
    # same text: read it once, not parse the JSON twice.
    b = a if shadow == primary else llm_text(shadow)
    if a is None or b is None:
        side = "primary" if a is None else "shadow"
        return Comparison("uncomparable", "llm", detail=f"{side} body is not a generation")
    ratio: float | None
    if a == b:  # the same text: no need to split it into words
        similarity, ratio, detail = 1.0, 1.0, _SAME_TEXT
    else:
        a_words, b_words = words(a), words(b)
        similarity = jaccard(a_words, b_words)
        ratio = length_ratio(len(a_words), len(b_words))
        detail = f"jaccard {similarity:.3f}"
    agreed = similarity >= tolerance.min_similarity
    return Comparison(
        "agree" if agreed else "disagree",
        "llm",
        similarity=similarity,
        length_ratio=ratio,
        detail=detail,
        primary_excerpt=a[:EXCERPT_CHARS],
        shadow_excerpt=b[:EXCERPT_CHARS],
    )


def words(text: str) -> list[str]:
    """The lower-cased word tokens of `text` (a cheap, model-independent tokenisation):
    the runs of `\\w` characters."""
    if text.isascii():
        # The same tokens in two C passes (lower-case and blank out non-word characters
        # in one translate, then split on the blanks), several times faster than the
        # regex: in ASCII, `\\w` is exactly [A-Za-z0-9_].
        return text.translate(_ASCII_WORDS).split()
    return _WORD.findall(text.lower())


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """|A & B| / |A | B| of the token sets; two empty texts are the same (1.0)."""
    sa, sb = set(a), set(b)
    common = len(sa & sb)
    union = len(sa) + len(sb) - common  # counted, not built as a third set
    return common / union if union else 1.0


def length_ratio(primary_tokens: int, shadow_tokens: int) -> float | None:
    """Shadow length over primary length; None when the primary said nothing."""
    if primary_tokens == 0:
        return 1.0 if shadow_tokens == 0 else None
    return shadow_tokens / primary_tokens


def llm_text(body: bytes) -> str | None:
    """The generated text of choice 0, from any OpenAI or Ollama response body.

    Reads a whole JSON answer (chat, completions, Ollama chat/generate), an SSE stream
    (`data:` events, `[DONE]`) or an NDJSON stream, whichever `body` is; None when it
    is none of them (or an error object).
    """
    try:  # a whole answer, the common case: one parse
        return _joined([orjson.loads(body)])
    except orjson.JSONDecodeError:
        pass
    if body.lstrip().startswith((b"data:", b"event:", b":")) or b"\ndata:" in body[:4096]:
        return _joined(_sse_events(body))
    events: list[Any] = []
    for line in body.split(b"\n"):
        if line.strip():
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                return None
    return _joined(events)


def _sse_events(body: bytes) -> list[Any]:
    events: list[Any] = []
    for line in body.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            continue
        try:
            events.append(orjson.loads(data))
        except orjson.JSONDecodeError:
            continue  # a cut event: the rest of the stream still says something
    return events


def _joined(events: Sequence[Any]) -> str | None:
    parts: list[str] = []
    found = False
    for event in events:
        if not isinstance(event, dict):
            continue
        if "error" in event and not event.get("choices"):
            return None
        text = _event_text(event)
        if text is not None:
            found = True
            parts.append(text)
    return "".join(parts) if found else None


def _event_text(event: dict[str, Any]) -> str | None:
    choices = event.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            for key in ("message", "delta"):
                part = choice.get(key)
                if isinstance(part, dict):
                    content = part.get("content")
                    return content if isinstance(content, str) else ""
            text = choice.get("text")
            if isinstance(text, str):
                return text
        return "" if not choices else None
    message = event.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    response = event.get("response")
    if isinstance(response, str):
        return response
    return None


# Embeddings -----------------------------------------------------------------------------


def compare_embeddings(primary: bytes, shadow: bytes, tolerance: Tolerance) -> Comparison:
    """Element-wise tolerance and mean cosine similarity of two embedding answers."""
    a, b = _embeddings(primary), _embeddings(shadow)
    if a is None or b is None:
        side = "primary" if a is None else "shadow"
        return Comparison("uncomparable", "embedding", detail=f"{side} body has no embeddings")
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b, strict=True)):
        return Comparison("disagree", "embedding", detail="different number or size of vectors")
    pairs = [(p, q) for x, y in zip(a, b, strict=True) for p, q in zip(x, y, strict=True)]
    cosines = [cosine(x, y) for x, y in zip(a, b, strict=True)]
    worst = max((abs(p - q) for p, q in pairs), default=0.0)
    agreed = all(close(p, q, tolerance.numeric) for p, q in pairs)
    similarity = sum(cosines) / len(cosines) if cosines else 1.0
    return Comparison(
        "agree" if agreed else "disagree",
        "embedding",
        similarity=similarity,
        max_abs_error=worst,
        detail=f"cosine {similarity:.4f}, max |delta| {worst:.3g}",
    )


def _embeddings(body: bytes) -> list[list[float]] | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    vectors: Any
    if isinstance(doc.get("data"), list):  # OpenAI
        vectors = [d.get("embedding") for d in doc["data"] if isinstance(d, dict)]
    elif isinstance(doc.get("embeddings"), list):  # Ollama /api/embed
        vectors = doc["embeddings"]
    elif isinstance(doc.get("embedding"), list):  # Ollama /api/embeddings
        vectors = [doc["embedding"]]
    else:
        return None
    out: list[list[float]] = []
    for vector in vectors:
        if not isinstance(vector, list) or not all(is_number(v) for v in vector):
            return None
        out.append([float(v) for v in vector])
    return out


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 1.0 for two zero vectors, 0.0 when only one is zero."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return dot / (na * nb)


def _plain(body: bytes, limit: int) -> bytes | None:
    """`body`, gunzipped if it is gzip (a client asked for it), bounded by `limit`."""
    if not body.startswith(b"\x1f\x8b"):
        return body
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(body, limit)
    except zlib.error:
        return None
    return out
