"""The real BentoML fraud services answered directly, no gateway in between.

These pin down what real BentoML does (its JSON, readiness, validation errors), which
the gateway tests then expect through `/services/{route}/{api}`, and that the real
service keeps the API of `switchyard simulate bentoml`.
"""

from __future__ import annotations

import httpx
import pytest

from tests.backends.bentoml.bentoml_proc import BentoService

pytestmark = [pytest.mark.bentoml, pytest.mark.timeout(120)]

ROWS = [[1.2, 0.4, -0.3, 0.8], [-1.0, -0.5, 0.2, 1.5], [2.0, 1.5, 1.0, -1.0]]


def test_readyz_predict_and_classify(bento: tuple[BentoService, BentoService]) -> None:
    with httpx.Client(timeout=10) as client:
        for service in bento:
            assert client.get(f"{service.url}/readyz").status_code == 200
            predicted = client.post(f"{service.url}/predict", json={"features": ROWS})
            assert predicted.status_code == 200, predicted.text
            scores = predicted.json()
            assert len(scores) == len(ROWS) and all(0.0 < p < 1.0 for p in scores)
            # The ground truth's weights: the third row is far riskier than the second.
            assert scores[2] > 0.5 > scores[1]
            classified = client.post(
                f"{service.url}/classify", json={"features": ROWS[2], "threshold": 0.5}
            )
            assert classified.status_code == 200, classified.text
            assert classified.json() == {
                "label": "fraud",
                "probability": pytest.approx(scores[2]),
                "version": service.version,
            }


def test_champion_and_challenger_are_different_models(
    bento: tuple[BentoService, BentoService],
) -> None:
    with httpx.Client(timeout=10) as client:
        scores = [client.post(f"{s.url}/predict", json={"features": ROWS}).json() for s in bento]
    # Trained on different seeds: close (one ground truth) but not the same model.
    assert scores[0] != scores[1]


def test_bad_input_is_bentomls_400(bento: tuple[BentoService, BentoService]) -> None:
    champion = bento[0]
    with httpx.Client(timeout=10) as client:
        short_row = client.post(f"{champion.url}/predict", json={"features": [[1.0, 2.0]]})
        missing = client.post(f"{champion.url}/predict", json={"rows": ROWS})
        threshold = client.post(
            f"{champion.url}/classify", json={"features": ROWS[0], "threshold": 2}
        )
        not_json = client.post(
            f"{champion.url}/predict",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
    assert short_row.status_code == 400
    assert short_row.json()["detail"][0]["type"] == "too_short"
    assert short_row.json()["detail"][0]["loc"] == ["features", 0]
    assert missing.status_code == 400 and missing.json()["detail"][0]["type"] == "missing"
    assert threshold.status_code == 400 and threshold.json()["detail"][0]["loc"] == ["threshold"]
    assert not_json.status_code == 400
