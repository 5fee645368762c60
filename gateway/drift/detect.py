"""Evidently, behind one function: a window and the reference in, per-column drift out.

Only the drift worker imports this module (Evidently and pandas cost ~300 MB and
seconds to import). Written against Evidently 0.7's API:

- `Report([DataDriftPreset(...)], include_tests=True).run(current, reference)`: the
  current data comes first;
- there is no dataset-level drift boolean: the window drifts when the share of drifted
  columns reaches `drift_share`;
- a column drifted when its "Value Drift for column X" test FAILs; its score is the
  `ValueDrift` metric's value (a p-value or a distance, depending on the method);
- `Snapshot.save_html` takes a path.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

with warnings.catch_warnings():
    # Evidently 0.7 imports numpy.core and other deprecated names; harmless, but it
    # must not fail a process (or test run) that turns warnings into errors.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset


@dataclass(frozen=True, slots=True)
class DetectConfig:
    """How one route's windows are judged (from its policy's drift block)."""

    columns: tuple[str, ...]  # the columns compared; all must be in the reference
    drift_share: float = 0.5
    method: str | None = None
    methods: Mapping[str, str] = field(default_factory=dict)
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class ColumnResult:
    """Drift of one column."""

    column: str
    score: float | None
    drifted: bool
    method: str
    threshold: float | None


@dataclass(frozen=True, slots=True)
class DriftResult:
    """One evaluation of a window."""

    share: float
    drifted: bool
    columns: tuple[ColumnResult, ...]
    rows: int
    duration_s: float
    skipped: tuple[str, ...] = ()  # columns with no values in the window or reference

    def summary(self) -> dict[str, Any]:
        """A compact JSON-able summary (passed to Kubeflow and the webhook)."""
        return {
            "share": round(self.share, 4),
            "drifted": self.drifted,
            "rows": self.rows,
            "drifted_columns": [c.column for c in self.columns if c.drifted],
            "scores": {c.column: c.score for c in self.columns},
        }


def frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """The window's rows as a DataFrame of exactly `columns` (missing values NaN)."""
    return pd.DataFrame.from_records(list(rows), columns=list(columns))


def evaluate(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    config: DetectConfig,
    html_path: Path | None = None,
) -> DriftResult:
    """Compare a window with the reference; write the HTML report to `html_path`."""
    started = time.perf_counter()
    usable = [
        c
        for c in config.columns
        if c in current.columns and current[c].notna().any() and reference[c].notna().any()
    ]
    skipped = tuple(c for c in config.columns if c not in usable)
    if not usable:
        raise ValueError("no column has values in both the window and the reference")
    numerical = [
        c for c in usable if is_numeric_dtype(reference[c]) and not is_bool_dtype(reference[c])
    ]
    categorical = [c for c in usable if c not in numerical]
    cur = current[usable].copy()
    ref = reference[usable].copy()
    for c in numerical:  # window values arrive untyped; align them with the reference
        cur[c] = pd.to_numeric(cur[c], errors="coerce")
    for c in categorical:
        cur[c] = cur[c].map(_category, na_action="ignore")
        ref[c] = ref[c].map(_category, na_action="ignore")
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    per_column = {c: m for c, m in config.methods.items() if c in usable}
    preset = DataDriftPreset(
        columns=usable,
        drift_share=config.drift_share,
        method=config.method,
        per_column_method=per_column or None,
        threshold=config.threshold,
    )
    with warnings.catch_warnings():
        # numpy warns on constant columns (a correlation of zero variance) while the
        # report is built; the drift verdicts are unaffected, and the worker's log and
        # warnings-as-errors test runs should not fill with it.
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([preset], include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
        results = _columns(snapshot.dict(), usable)
    drifted = sum(1 for r in results if r.drifted)
    share = drifted / len(usable)
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = html_path.with_name(f".{html_path.name}.{os.getpid()}.tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            snapshot.save_html(str(tmp))
        os.replace(tmp, html_path)  # the admin API never serves a half-written report
    return DriftResult(
        share=share,
        drifted=share >= config.drift_share,
        columns=tuple(results),
        rows=len(current),
        duration_s=time.perf_counter() - started,
        skipped=skipped,
    )


def _category(value: object) -> str:
    # One spelling per category on both sides: 1 and 1.0, True and "true" alike.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_TEST_PREFIX = "Value Drift for column "
# Evidently reports an automatically chosen method by its display name; the metrics and
# the status use the names a policy writes (`method`, `methods`).
_METHOD_NAMES = {
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Jensen-Shannon distance": "jensenshannon",
    "Kullback-Leibler divergence": "kl_div",
    "PSI": "psi",
    "Wasserstein distance (normed)": "wasserstein",
    "Anderson-Darling": "anderson",
    "Cramer-von Mises": "cramer_von_mises",
    "Fisher's Exact test": "fisher_exact",
    "g_test": "g_test",
    "Hellinger distance": "hellinger",
    "Mann-Whitney U-rank test": "mannw",
    "Energy-distance": "ed",
    "Epps-Singleton": "es",
    "t_test": "t_test",
    "empirical_mmd": "empirical_mmd",
    "Total-Variation-Distance": "TVD",
}


def _columns(data: Mapping[str, Any], usable: Sequence[str]) -> list[ColumnResult]:
    """Per-column score (ValueDrift metrics) and verdict (their tests' status)."""
    scores: dict[str, tuple[float | None, str, float | None]] = {}
    by_metric: dict[str, str] = {}
    for metric in data.get("metrics", ()):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        column = str(config.get("column"))
        value = metric.get("value")
        score = float(value) if isinstance(value, (int, float)) else None
        if score is not None and not math.isfinite(score):
            score = None
        threshold = config.get("threshold")
        method = str(config.get("method", ""))
        scores[column] = (score, _METHOD_NAMES.get(method, method), threshold)
        by_metric[str(metric.get("id"))] = column
    failed: set[str] = set()
    for test in data.get("tests", ()):
        name = str(test.get("name", ""))
        metric_id = str(test.get("metric_config", {}).get("metric_id", ""))
        tested = by_metric.get(metric_id)
        if tested is None and name.startswith(_TEST_PREFIX):
            tested = name[len(_TEST_PREFIX) :]
        if tested is not None and test.get("status") == "FAIL":
            failed.add(tested)
    out = []
    for column in usable:
        score, method, threshold = scores.get(column, (None, "", None))
        out.append(ColumnResult(column, score, column in failed, method, threshold))
    return out
