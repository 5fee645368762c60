"""The seed's BentoML fraud detection service, trained at start-up on synthetic data.

Served from the BentoML environment (.venv-bentoml, made by install.sh) by the tests:

    FRAUD_VERSION=1 FRAUD_SEED=7 BENTOML_DO_NOT_TRACK=true \
      .venv-bentoml/bin/bentoml serve fraud_service:FraudDetectionService \
      --working-dir tests/backends/bentoml --host 127.0.0.1 --port 3000

Nothing is downloaded: the training set is drawn here from a seeded generator (a
logistic ground truth over the four standardised transaction features of the Triton
stage), so two instances with different FRAUD_SEED values are two honestly different
model versions, a champion and a challenger.

The APIs are those of `switchyard simulate bentoml` (gateway/simulate/bentoml.py), so a
client of the quick start's simulated service works with this real one unchanged:

    POST /predict   {"features": [[f1, f2, f3, f4], ...]}   -> [p1, ...]
    POST /classify  {"features": [f1, f2, f3, f4], "threshold": 0.5}
                    -> {"label": "fraud" | "legit", "probability": p, "version": "1"}

`version` is FRAUD_VERSION, so a test can count which service answered a request that
went through the gateway. Rows of the wrong width are BentoML's own 400 validation
errors (pydantic, from the signatures), never a 500.
"""

from __future__ import annotations

import os
from typing import Annotated

import bentoml
import numpy as np
from pydantic import Field
from sklearn.linear_model import LogisticRegression

N_FEATURES = 4
TRAINING_ROWS = 2000
# One transaction: exactly N_FEATURES numbers, checked by BentoML's input validation.
Row = Annotated[list[float], Field(min_length=N_FEATURES, max_length=N_FEATURES)]


def synthetic_training_set(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised transactions and fraud labels drawn from a fixed logistic truth."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(TRAINING_ROWS, N_FEATURES))
    logits = x @ np.array([1.5, 1.0, 0.8, -0.6]) - 1.0
    y = rng.random(TRAINING_ROWS) < 1.0 / (1.0 + np.exp(-logits))
    return x, y.astype(np.int64)


@bentoml.service(workers=1, traffic={"timeout": 10})
class FraudDetectionService:
    """A logistic-regression fraud classifier; FRAUD_SEED picks its training set."""

    def __init__(self) -> None:
        self.version = os.environ.get("FRAUD_VERSION", "1")
        x, y = synthetic_training_set(int(os.environ.get("FRAUD_SEED", "0")))
        self.model = LogisticRegression().fit(x, y)

    def _scores(self, rows: list[list[float]]) -> list[float]:
        x = np.asarray(rows, dtype=np.float64).reshape(-1, N_FEATURES)
        return [float(p) for p in self.model.predict_proba(x)[:, 1]]

    @bentoml.api
    def predict(self, features: list[Row]) -> list[float]:
        """Fraud probability of each transaction row."""
        return self._scores(features)

    @bentoml.api
    def classify(
        self, features: Row, threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    ) -> dict[str, object]:
        """Label one transaction fraud or legit at `threshold`."""
        [probability] = self._scores([features])
        return {
            "label": "fraud" if probability >= threshold else "legit",
            "probability": probability,
            "version": self.version,
        }
