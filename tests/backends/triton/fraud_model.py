"""The seed's fraud detector as two tiny logistic models: champion and challenger.

Imported by the Triton server script (in .venv-triton, numpy<2) and by the tests (in the
gateway's environment, numpy 2): plain numpy and the standard library only, so both
compute the same probability for the same transaction and a test can tell which model
version answered from the numbers alone, whatever protocol carried them.

The tensors are those of `switchyard simulate kserve` (gateway/simulate/kserve_models.py):
`features` FP32 [-1, 4] (standardised transaction features, one row each) in,
`probability` FP32 [-1, 1] out, and the same weights as the simulator's versions 1
(champion) and 2 (challenger), so the quick start's simulated fraud detector and this
real one answer alike (test_triton_direct.py checks that they do).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = ("amount", "merchant_risk", "distance_from_home", "hour_of_day")
INPUT = "features"
OUTPUT = "probability"
INDEX = "index"  # the decoupled model's row number output
CHAMPION = "fraud-champion"
CHALLENGER = "fraud-challenger"
STREAM = "fraud-stream"


@dataclass(frozen=True)
class Logistic:
    """p(fraud) = sigmoid(x . weights + bias), row by row."""

    weights: tuple[float, ...]
    bias: float

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Fraud probability per row of an [N, len(FEATURES)] array, as float32 [N, 1]."""
        x = np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES))
        logits = x @ np.asarray(self.weights, dtype=np.float64) + self.bias
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32).reshape(-1, 1)


# The simulator's PRESET_WEIGHTS["1"] and ["2"] (four weights, then the bias): far
# enough apart that the same transaction scores clearly differently on each.
MODELS = {
    CHAMPION: Logistic(weights=(0.8, -0.5, 1.2, 0.3), bias=-0.2),
    CHALLENGER: Logistic(weights=(-0.4, 0.9, 0.6, -1.1), bias=0.1),
}


def sample_features(n: int, seed: int = 0) -> np.ndarray:
    """`n` standardised transactions, float32 [n, len(FEATURES)], reproducible by seed."""
    return np.random.default_rng(seed).normal(size=(n, len(FEATURES))).astype(np.float32)


def which_model(rows: np.ndarray, probabilities: np.ndarray) -> str:
    """Name of the model whose output `probabilities` are for `rows` (ValueError: neither)."""
    got = np.asarray(probabilities, dtype=np.float32).reshape(-1, 1)
    for name, model in MODELS.items():
        if got.shape == (len(rows), 1) and np.allclose(got, model.predict(rows), atol=1e-6):
            return name
    raise ValueError(f"{got.ravel().tolist()} matches neither model")
