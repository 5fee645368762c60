"""Real Evidently on synthetic data with a known shift (the drift worker's adapter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gateway.drift.detect import DetectConfig, evaluate, frame

NUMERIC = ("a", "b", "c", "d", "e", "f")
COLUMNS = (*NUMERIC, "country")


def sample(seed: int, rows: int, *, shift: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {c: rng.normal(0.0, 1.0, rows) for c in NUMERIC}
    data["country"] = rng.choice(["de", "fr", "es"], rows, p=[0.5, 0.3, 0.2])
    out = pd.DataFrame(data)
    if shift:  # exactly two columns move: a mean shift and a variance change
        out["b"] = out["b"] + 1.0
        out["e"] = out["e"] * 3.0
    return out


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return sample(0, 1000)


def test_shift_in_two_columns_is_found_on_exactly_those(
    reference: pd.DataFrame, tmp_path: Path
) -> None:
    html = tmp_path / "r" / "report.html"
    config = DetectConfig(columns=COLUMNS, drift_share=0.25, methods={"a": "psi"})
    result = evaluate(sample(1, 500, shift=True), reference, config, html)
    assert {c.column for c in result.columns if c.drifted} == {"b", "e"}
    assert result.share == pytest.approx(2 / 7)
    assert result.drifted  # 2/7 >= 0.25
    methods = {c.column: c.method for c in result.columns}
    assert methods["a"] == "psi" and methods["b"] == "ks" and methods["country"] == "chisquare"
    scores = {c.column: c.score for c in result.columns}
    assert scores["b"] is not None and scores["b"] < 0.05  # ks: a p-value
    assert (
        html.read_text().lstrip().lower().startswith("<!doctype html")
        or "<html" in html.read_text()
    )
    assert result.summary()["drifted_columns"] == ["b", "e"]


def test_no_shift_means_no_drift_over_repeated_windows(reference: pd.DataFrame) -> None:
    config = DetectConfig(columns=COLUMNS, drift_share=0.5)
    flagged = 0
    for seed in range(10, 16):
        result = evaluate(sample(seed, 500), reference, config)
        assert not result.drifted, result
        flagged += sum(c.drifted for c in result.columns)
    assert flagged <= 4  # a p < 0.05 test errs on ~5% of 42 column checks


def test_window_rows_align_with_reference_types(reference: pd.DataFrame) -> None:
    rows: list[dict[str, object]] = [
        {"a": 0.1, "b": None, "country": "de"},
        {"a": "oops", "country": True},
    ] * 60
    current = frame(rows, COLUMNS)
    assert list(current.columns) == list(COLUMNS)
    result = evaluate(current, reference, DetectConfig(columns=COLUMNS))
    # Columns without values in the window are skipped, not failed.
    assert set(result.skipped) == {"b", "c", "d", "e", "f"}
    assert [c.column for c in result.columns] == ["a", "country"]


def test_threshold_and_method_apply_to_every_column(reference: pd.DataFrame) -> None:
    config = DetectConfig(columns=("a", "b"), method="wasserstein", threshold=0.5)
    result = evaluate(sample(2, 500, shift=True), reference, config)
    assert [(c.column, c.method, c.drifted) for c in result.columns] == [
        ("a", "wasserstein", False),
        ("b", "wasserstein", True),  # a shift of one standard deviation: distance ~1
    ]
