"""Ground truth in the admin API: how right each version was, by its true labels.

- `GET /admin/ground-truth/{route}`: per variant and registry version: labels,
  accuracy, precision, recall and F1 (of the route's `positive` class; without one,
  macro-averaged over the classes seen), AUC (binned, from the score histogram;
  needs `positive` and a `score`), the label delay's p50 and p95, and the confusion
  counts; plus predictions captured and capture failures by reason.

The numbers are the fleet's: summed from the per-process counters
(`gateway.observability.ground_truth_metrics`) that the statistics source reads
(`gateway.stats`: this process, the supervisor's merged workers, or Prometheus over
every replica), named in `source`; with the source down the answer is a 503 saying why.
Per-process gauges cannot be summed, which is why accuracy is computed here from
counts, and why the rolling `switchyard_model_accuracy` comes from the drift worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.admin.endpoints import Handler
from gateway.admin.views import unavailable
from gateway.dataplane.feedback.groundtruth import OTHER, GroundTruth
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.observability.ground_truth_metrics import (
    CAPTURE_FAILURES,
    CAPTURED,
    DELAY_BUCKET,
    LABEL_DELAY_BUCKETS,
    LABELS,
    SCORE_BUCKET,
    SCORE_BUCKETS,
)
from gateway.stats.counts import Sample, quantile
from gateway.stats.sources import StatsSource, StatsUnavailable

Version = tuple[str, str]  # (variant, version)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def classification(
    confusion: Mapping[tuple[str, str], int], positive: str | None
) -> dict[str, Any]:
    """Accuracy, precision, recall and F1 of (predicted, label) -> count: of the
    `positive` class, or macro-averaged over the classes seen (sklearn's convention: a
    class without predictions has precision 0)."""
    total = sum(confusion.values())
    correct = sum(n for (p, t), n in confusion.items() if p == t)
    out: dict[str, Any] = {"labels": total, "accuracy": _ratio(correct, total)}
    if positive is not None:
        tp = confusion.get((positive, positive), 0)
        fp = sum(n for (p, t), n in confusion.items() if p == positive and t != positive)
        fn = sum(n for (p, t), n in confusion.items() if p != positive and t == positive)
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        f1 = None
        if precision is not None and recall is not None:
            f1 = _ratio(2 * precision * recall, precision + recall) or 0.0
        out.update(average="binary", precision=precision, recall=recall, f1=f1)
        return out
    seen = sorted({c for pair in confusion for c in pair} - {OTHER})
    if not seen:
        out.update(average="macro", precision=None, recall=None, f1=None)
        return out
    ps, rs, fs = [], [], []
    for c in seen:
        tp = confusion.get((c, c), 0)
        fp = sum(n for (p, t), n in confusion.items() if p == c and t != c)
        fn = sum(n for (p, t), n in confusion.items() if p != c and t == c)
        p_c = tp / (tp + fp) if tp + fp else 0.0
        r_c = tp / (tp + fn) if tp + fn else 0.0
        ps.append(p_c)
        rs.append(r_c)
        fs.append(2 * p_c * r_c / (p_c + r_c) if p_c + r_c else 0.0)
    out.update(
        average="macro",
        precision=sum(ps) / len(seen),
        recall=sum(rs) / len(seen),
        f1=sum(fs) / len(seen),
    )
    return out


def binned_auc(positives: Iterable[int], negatives: Iterable[int]) -> float | None:
    """ROC AUC from per-bucket counts of the positive and negative classes' scores
    (same buckets, ascending): scores sharing a bucket count as ties (one half). Exact
    when every score sits on a bucket's upper edge; None without both classes."""
    pos, neg = list(positives), list(negatives)
    p_total, n_total = sum(pos), sum(neg)
    if not p_total or not n_total:
        return None
    above = p_total
    wins = 0.0
    for p_i, n_i in zip(pos, neg, strict=True):
        above -= p_i  # positives in higher buckets
        wins += n_i * (above + 0.5 * p_i)
    return wins / (p_total * n_total)


def _per_bucket(cumulative: Mapping[float, float], bounds: tuple[float, ...]) -> tuple[int, ...]:
    """Per-bucket counts (the last is +Inf) from cumulative `le` samples."""
    edges = [*bounds, float("inf")]
    out, before = [], 0.0
    for edge in edges:
        value = cumulative.get(edge, before)
        out.append(round(value - before))
        before = value
    return tuple(out)


def summarize(route: str, truth: GroundTruth, samples: Iterable[Sample]) -> dict[str, Any]:
    """The fleet's ground-truth numbers of `route` from its samples (any process)."""
    confusion: dict[Version, dict[tuple[str, str], int]] = {}
    scores: dict[Version, dict[str, dict[float, float]]] = {}
    delays: dict[Version, dict[float, float]] = {}
    captured: dict[Version, int] = {}
    failures: dict[str, int] = {}
    for s in samples:
        labels = s.labels
        if labels.get("route") != route:
            continue
        key = (labels.get("variant", ""), labels.get("version", ""))
        if s.name == LABELS:
            pair = (labels.get("predicted", ""), labels.get("label", ""))
            table = confusion.setdefault(key, {})
            table[pair] = table.get(pair, 0) + int(s.value)
        elif s.name == SCORE_BUCKET:
            le = float(labels.get("le", "inf"))
            by_label = scores.setdefault(key, {}).setdefault(labels.get("label", ""), {})
            by_label[le] = by_label.get(le, 0.0) + s.value
        elif s.name == DELAY_BUCKET:
            le = float(labels.get("le", "inf"))
            found = delays.setdefault(key, {})
            found[le] = found.get(le, 0.0) + s.value
        elif s.name == CAPTURED:
            captured[key] = captured.get(key, 0) + int(s.value)
        elif s.name == CAPTURE_FAILURES:
            reason = labels.get("reason", "")
            failures[reason] = failures.get(reason, 0) + int(s.value)
    versions = []
    for key in sorted(set(confusion) | set(captured)):
        entry: dict[str, Any] = {
            "variant": key[0],
            "version": key[1],
            "predictions_captured": captured.get(key, 0),
            **classification(confusion.get(key, {}), truth.positive),
        }
        auc = None
        if truth.positive is not None and key in scores:
            size = len(SCORE_BUCKETS) + 1
            pos, neg = [0] * size, [0] * size
            for label, cumulative in scores[key].items():
                counts = _per_bucket(cumulative, SCORE_BUCKETS)
                into = pos if label == truth.positive else neg
                for i, n in enumerate(counts):
                    into[i] += n
            auc = binned_auc(pos, neg)
        entry["auc"] = auc
        buckets = _per_bucket(delays.get(key, {}), LABEL_DELAY_BUCKETS)
        entry["label_delay_s"] = {
            "p50": quantile(0.5, buckets, LABEL_DELAY_BUCKETS),
            "p95": quantile(0.95, buckets, LABEL_DELAY_BUCKETS),
        }
        entry["confusion"] = [
            {"predicted": p, "label": t, "count": n}
            for (p, t), n in sorted(confusion.get(key, {}).items())
        ]
        versions.append(entry)
    return {
        "route": route,
        "classes": list(truth.classes),
        "positive": truth.positive,
        "auc": "binned: scores in one bucket of 0, 0.05, ..., 1 count as ties",
        "versions": versions,
        "capture_failures": dict(sorted(failures.items())),
    }


def ground_truth_handlers(
    snapshot: Callable[[], RuntimeSnapshot], source: StatsSource
) -> dict[str, Handler]:
    """The handler of `GET /admin/ground-truth/{route}` (`gateway.admin.endpoints`)."""

    async def ground_truth(request: Request) -> Response:
        route = request.path_params["route"]
        compiled = snapshot().routes.get(route)
        truth = compiled.ground_truth if compiled is not None else None
        if truth is None:
            return JSONResponse(
                {"error": f"route {route!r} takes no labels (no `ground_truth` block)"},
                status_code=404,
            )
        try:
            evidence = await source.read(route)
        except StatsUnavailable as exc:
            return unavailable(exc)
        body = summarize(route, truth, evidence.samples)
        body["source"] = evidence.origin.to_json()
        return JSONResponse(body)

    return {"ground_truth": ground_truth}
