"""What a shadow comparison says: the result type and the tolerance it is judged by.

Shared by the comparisons of every kind of answer (`shadowcompare`, `shadowtensors`,
`shadowlabels`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EXCERPT_CHARS = 256  # of each answer, kept for the comparison log


@dataclass(frozen=True, slots=True)
class Tolerance:
    """When two answers count as the same."""

    numeric: float = 1e-4  # |a - b| <= numeric * max(1, |a|, |b|)
    min_similarity: float = 0.5  # LLM texts: token-set Jaccard at or above this agrees


# Not frozen: one is built per comparison, and frozen dataclasses pay object.__setattr__
# per field. Treat it as immutable all the same. Its `__init__` is written out: the one
# `@dataclass` generates is Python code even when this module is compiled (about 1 µs
# per comparison, ten interpreted attribute stores); a written one compiles with it.
@dataclass(init=False, slots=True)
class Comparison:
    """The outcome of comparing one shadow answer with its primary's."""

    result: str  # "agree" | "disagree" | "uncomparable"
    kind: str  # "llm" | "tensor" | "classifier" | "embedding" | "json" | "status"
    similarity: float | None  # 0..1: Jaccard (llm), cosine (embedding), share (tensor)
    length_ratio: float | None  # llm: shadow tokens / primary tokens
    probability_delta: float | None  # classifier: |p_shadow - p_primary| at the label
    max_abs_error: float | None  # tensor, embedding: largest element difference
    outputs: tuple[tuple[str, bool], ...]  # tensor: (output name, agreed)
    detail: str  # why, for the comparison log
    primary_excerpt: str
    shadow_excerpt: str

    def __init__(
        self,
        result: str,
        kind: str,
        similarity: float | None = None,
        length_ratio: float | None = None,
        probability_delta: float | None = None,
        max_abs_error: float | None = None,
        outputs: tuple[tuple[str, bool], ...] = (),
        detail: str = "",
        primary_excerpt: str = "",
        shadow_excerpt: str = "",
    ) -> None:
        self.result = result
        self.kind = kind
        self.similarity = similarity
        self.length_ratio = length_ratio
        self.probability_delta = probability_delta
        self.max_abs_error = max_abs_error
        self.outputs = outputs
        self.detail = detail
        self.primary_excerpt = primary_excerpt
        self.shadow_excerpt = shadow_excerpt

    @property
    def agreed(self) -> bool:
        """Whether the shadow agreed with the primary."""
        return self.result == "agree"


def close(a: float, b: float, tol: float) -> bool:
    """|a - b| within `tol`, relative to the larger magnitude (absolute below 1)."""
    if a == b:
        return True
    if math.isnan(a) or math.isnan(b):
        return False
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
