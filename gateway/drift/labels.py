"""Labeled windows: the newest labeled predictions of one route and model version, and
the classification metrics computed exactly over them.

The gateway sends every accepted label to the fleet's drift worker as a
`LabeledRecord` (`labeled.py`); the worker appends it to the window of its (route,
version). A window keeps the newest `labels.size` records and, with a `duration`, only
those labeled within it. Its metrics are recomputed from the records at each
evaluation (no running sums that could drift from the window's content):

- accuracy: correct / labeled;
- precision, recall, F1 of the positive class (`labels.positive`): None where the
  denominator is 0 (no positive prediction, no positive label);
- AUC: from the records that carry a score (the positive class's probability), by the
  Mann-Whitney rank statistic with ties averaged (the ROC area exactly); None without
  both classes among them.

The version's reference for concept drift is its first full window (`size` labels):
the version's accuracy when it started serving, frozen then.

Features: the gateway's drift rows of a ground-truth route carry the request's claim
key (`key`), so a label joins the request's features (`FeatureJoin`, bounded) in the
labeled window saved for retraining.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from gateway.drift.labeled import LabeledRecord

Key = tuple[str, str]  # (route, version)


@dataclass(frozen=True, slots=True)
class WindowMetrics:
    """Classification quality over one labeled window."""

    samples: int
    correct: int
    accuracy: float
    precision: float | None
    recall: float | None
    f1: float | None
    auc: float | None
    scored: int  # records with a score (the AUC's sample)
    positive: str

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "auc": self.auc,
            "scored": self.scored,
            "positive": self.positive,
        }


def auc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """The area under the ROC curve: P(score of a positive > score of a negative), ties
    counting one half; None without both classes."""
    n_pos = sum(positives)
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(scores, dtype=float))  # ties get their average rank
    rank_sum = float(ranks[np.asarray(positives, dtype=bool)].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def window_metrics(records: Sequence[LabeledRecord], positive: str) -> WindowMetrics | None:
    """The metrics of `records` (None when there are none)."""
    if not records:
        return None
    tp = fp = fn = correct = 0
    for r in records:
        correct += r.predicted == r.label
        if r.predicted == positive:
            if r.label == positive:
                tp += 1
            else:
                fp += 1
        elif r.label == positive:
            fn += 1
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1: float | None = None
    if precision is not None and recall is not None:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    scored = [r for r in records if r.score is not None]
    area = auc(
        [r.score for r in scored if r.score is not None], [r.label == positive for r in scored]
    )
    return WindowMetrics(
        samples=len(records),
        correct=correct,
        accuracy=correct / len(records),
        precision=precision,
        recall=recall,
        f1=f1,
        auc=area,
        scored=len(scored),
        positive=positive,
    )


@dataclass(eq=False, slots=True)
class LabelWindow:
    """The newest labeled predictions of one route and model version."""

    size: int
    duration: float | None = None
    records: deque[LabeledRecord] = field(default_factory=deque)
    received: int = 0  # labels ever added
    variants: set[str] = field(default_factory=set)
    last_added: float = 0.0
    # The version's first full window (concept drift's reference), frozen when it filled.
    reference: tuple[LabeledRecord, ...] | None = None

    def __post_init__(self) -> None:
        self.resize(self.size, self.duration)

    def resize(self, size: int, duration: float | None) -> None:
        self.size, self.duration = size, duration
        self.records = deque(self.records, maxlen=size)

    def add(self, record: LabeledRecord, now: float) -> None:
        self.records.append(record)
        self.received += 1
        self.variants.add(record.variant)
        self.last_added = now
        if self.reference is None and len(self.records) >= self.size:
            self.reference = tuple(self.records)

    def trim(self, now: float) -> None:
        """Drop labels accepted more than `duration` ago."""
        if self.duration is None:
            return
        oldest = now - self.duration
        while self.records and self.records[0].labeled_at < oldest:
            self.records.popleft()

    def snapshot(self) -> list[LabeledRecord]:
        return list(self.records)

    def __len__(self) -> int:
        return len(self.records)


class FeatureJoin:
    """The features of recent sampled requests by claim key, to join labels with.

    Bounded: the oldest keys leave first once `limit` are held (a label that comes
    later than that is saved without its features, its columns empty)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._rows: OrderedDict[str, Mapping[str, Any]] = OrderedDict()

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            key = row.get("key")
            if isinstance(key, str) and key:
                self._rows[key] = row
                self._rows.move_to_end(key)
        while len(self._rows) > self.limit:
            self._rows.popitem(last=False)

    def get(self, key: str) -> Mapping[str, Any] | None:
        return self._rows.get(key)

    def __len__(self) -> int:
        return len(self._rows)


def labeled_frame(
    records: Sequence[LabeledRecord], join: FeatureJoin | None
) -> list[dict[str, Any]]:
    """The labeled window as rows for Parquet: each record's fields, whether it was
    correct, and the request's features where its sampled row is still held."""
    out: list[dict[str, Any]] = []
    for r in records:
        row: dict[str, Any] = {}
        features = join.get(r.key) if join is not None else None
        if features is not None:
            row.update({k: v for k, v in features.items() if k != "key"})
        row.update(r.to_json())
        row["correct"] = r.correct
        out.append(row)
    return out
