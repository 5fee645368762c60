"""The BentoML simulator as users start it (`switchyard simulate bentoml`), over HTTP.

Two instances, champion (model version 1) and challenger (2), as a canary's
backends would be: they answer the same request differently, count what they served,
and misbehave on request.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import pytest

from gateway.simulate.kserve_models import weights_for
from tests.procs import Simulator, start_simulator

ROWS = [[0.5, -1.0, 2.0, 0.25], [0.0, 0.0, 0.0, 0.0]]


def probability(version: str, row: list[float]) -> float:
    weights = weights_for(version, len(row))
    z = sum(w * x for w, x in zip(weights, row, strict=False)) + weights[-1]
    return 1.0 / (1.0 + math.exp(-z))


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[Simulator, Simulator]]:
    champion = start_simulator("bento-champion", kind="bentoml")
    try:
        challenger = start_simulator("bento-challenger", "--model-version", "2", kind="bentoml")
    except Exception:
        champion.proc.stop()
        raise
    try:
        yield champion, challenger
    finally:
        champion.proc.stop()
        challenger.proc.stop()


@pytest.fixture
def champion(sims: tuple[Simulator, Simulator]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sims[0].url, timeout=10) as client:
        yield client


def test_predict_and_classify_tell_versions_apart(sims: tuple[Simulator, Simulator]) -> None:
    answers = {}
    for sim, version in zip(sims, ("1", "2"), strict=True):
        with httpx.Client(base_url=sim.url, timeout=10) as client:
            predicted = client.post("/predict", json={"features": ROWS})
            assert predicted.status_code == 200
            assert predicted.headers["server"] == "BentoML Service/FraudClassifier"
            assert predicted.headers["x-sim-name"] == sim.name
            values = predicted.json()
            assert values == pytest.approx([probability(version, row) for row in ROWS], rel=1e-6)
            classified = client.post("/classify", json={"features": ROWS[0]}).json()
            assert classified["version"] == version
            assert classified["probability"] == values[0]
            assert classified["label"] == ("fraud" if values[0] >= 0.5 else "legit")
            strict = client.post("/classify", json={"features": ROWS[0], "threshold": 1.0})
            assert strict.json()["label"] == "legit"
            answers[version] = values
    assert answers["1"] != answers["2"]
    by_model = sims[1].stats()["by_model"]
    assert isinstance(by_model, dict) and by_model["FraudClassifier"]["2"] >= 3


@pytest.mark.parametrize(
    ("path", "body", "kind", "loc"),
    [
        ("/predict", {"rows": []}, "missing", ["features"]),
        ("/predict", {"features": "x"}, "list_type", ["features"]),
        ("/predict", {"features": [[1, 2, 3]]}, "too_short", ["features", 0]),
        ("/predict", {"features": [[1, 2, 3, "4"]]}, "float_type", ["features", 0, 3]),
        ("/classify", {"features": [1, 2, 3, 4, 5]}, "too_long", ["features"]),
        ("/classify", {"features": [1, 2, 3, 4], "threshold": 2}, "less_than_equal", ["threshold"]),
        ("/classify", [1, 2, 3, 4], "model_type", []),
    ],
)
def test_bad_input_gets_bentoml_validation_errors(
    champion: httpx.Client, path: str, body: object, kind: str, loc: list[object]
) -> None:
    reply = champion.post(path, json=body)
    assert reply.status_code == 400
    error = reply.json()
    assert error["error"] == "1 validation error for Input"
    assert (error["detail"][0]["type"], error["detail"][0]["loc"]) == (kind, loc)


def test_malformed_json_unknown_paths_and_methods(champion: httpx.Client) -> None:
    broken = champion.post(
        "/predict", content=b"{features", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["detail"][0]["type"] == "json_invalid"
    assert champion.post("/explain", json={}).status_code == 404
    assert champion.get("/predict").status_code == 405
    assert champion.post("/readyz").status_code == 405


def test_probes_schema_and_metrics(
    sims: tuple[Simulator, Simulator], champion: httpx.Client
) -> None:
    for probe in ("/readyz", "/livez", "/healthz"):
        reply = champion.get(probe)
        assert (reply.status_code, reply.text) == (200, "\n")
    schema = champion.get("/schema.json").json()
    routes = {route["name"]: route for route in schema["routes"]}
    assert routes["predict"]["route"] == "/predict"
    assert routes["classify"]["input"]["required"] == ["features"]
    assert set(champion.get("/docs.json").json()["paths"]) >= {"/predict", "/classify"}
    champion.post("/predict", json={"features": ROWS})
    metrics = champion.get("/metrics").text
    line = next(
        row
        for row in metrics.splitlines()
        if row.startswith(
            'bentoml_service_request_total{endpoint="/predict",http_response_code="200"'
        )
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
    try:
        champion.post("/sim/faults", json={"health_status": 503})
        not_ready = champion.get("/readyz")
        assert (not_ready.status_code, not_ready.text) == (503, "Runners are not ready.")
        assert champion.get("/livez").status_code == 200
    finally:
        champion.post("/sim/faults", json={"health_status": 200})


def test_faults_by_header(sims: tuple[Simulator, Simulator], champion: httpx.Client) -> None:
    throttled = champion.post("/predict", json={"features": ROWS}, headers={"x-sim-status": "429"})
    assert throttled.status_code == 429
    assert throttled.json()["error"].startswith("BentoService error handling API request:")
    crashed = champion.post("/predict", json={"features": ROWS}, headers={"x-sim-status": "500"})
    assert crashed.status_code == 500 and "unexpected error" in crashed.json()["error"]
    unavailable = champion.post(
        "/predict", json={"features": ROWS}, headers={"x-sim-status": "503"}
    )
    assert (unavailable.status_code, unavailable.json()) == (503, "")
    with pytest.raises(httpx.RemoteProtocolError):
        champion.post("/predict", json={"features": ROWS}, headers={"x-sim-cut-after": "0"})
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        champion.post("/predict", json={"features": ROWS}, headers={"x-sim-reset": "1"})
    with pytest.raises(httpx.ReadTimeout):
        champion.post(
            "/classify", json={"features": ROWS[0]}, headers={"x-sim-hang": "1"}, timeout=0.3
        )
    faults = sims[0].stats()["faults"]
    assert isinstance(faults, dict)
    assert faults["status"] >= 3 and faults["cut"] >= 1 and faults["hang"] >= 1
    assert faults["reset"] >= 1
