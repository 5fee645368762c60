"""Concept drift's report: Evidently's ClassificationPreset, current labeled window vs
the version's reference (its first full labeled window).

Only the drift worker imports this module (Evidently, pandas). The verdict itself does
not come from Evidently (its presets give metrics, not a drift boolean): the worker
compares the exact window metrics of `labels.py` (accuracy now vs the reference's,
`labels.max_accuracy_drop`); the report shows the two side by side (quality, confusion
matrices, per-class metrics) for a person looking into an episode.

Written against Evidently 0.7: `DataDefinition(classification=[BinaryClassification(
target, prediction_labels, pos_label)])` for two classes, `MulticlassClassification`
for more; `Report([ClassificationPreset()]).run(current, reference)`. The preset's
per-class part fails (KeyError) when a class occurs in one frame and not the other, as
when a version's reference saw only one class: then the report has the aggregate part
alone (`ClassificationQuality`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gateway.drift.labeled import LabeledRecord

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    from evidently import (
        BinaryClassification,
        DataDefinition,
        Dataset,
        MulticlassClassification,
        Report,
    )
    from evidently.presets import ClassificationPreset, ClassificationQuality


def _frame(records: Sequence[LabeledRecord]) -> pd.DataFrame:
    return pd.DataFrame(
        {"target": [r.label for r in records], "prediction": [r.predicted for r in records]}
    )


def report(
    current: Sequence[LabeledRecord],
    reference: Sequence[LabeledRecord],
    positive: str,
    html: Path,
) -> None:
    """Write the ClassificationPreset report of `current` against `reference` to `html`
    (atomically: a reader never gets half a report)."""
    cur, ref = _frame(current), _frame(reference)
    in_current = set(cur["target"]) | set(cur["prediction"])
    in_reference = set(ref["target"]) | set(ref["prediction"])
    classes = in_current | in_reference
    task: BinaryClassification | MulticlassClassification
    if len(classes) <= 2:
        task = BinaryClassification(
            target="target", prediction_labels="prediction", pos_label=positive
        )
    else:
        task = MulticlassClassification(target="target", prediction_labels="prediction")
    definition = DataDefinition(classification=[task], categorical_columns=["target", "prediction"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preset = ClassificationPreset() if in_current == in_reference else ClassificationQuality()
        snapshot = Report([preset]).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
    html.parent.mkdir(parents=True, exist_ok=True)
    tmp = html.with_name(f".{html.name}.tmp")
    snapshot.save_html(str(tmp))
    os.replace(tmp, html)
