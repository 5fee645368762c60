"""JSON services through the real gateway process to BentoML simulators:
`POST /services/{route}/{api}` with canary, stickiness (header and body field),
overrides, fallback, and errors from the gateway versus errors from the service.

Champion and challenger are simulators of versions 1 and 2; `/classify` answers name
the version, so every response says which variant served it.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import GatewayProc, Simulator, start_gateway, start_simulator

ROUTE = "fraud-service"
FEATURES = [0.5, -1.0, 2.0, 0.25]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def bentos() -> Iterator[tuple[Simulator, Simulator]]:
    champion = start_simulator("bento-1", "--model-version", "1", kind="bentoml")
    try:
        challenger = start_simulator("bento-2", "--model-version", "2", kind="bentoml")
    except Exception:
        champion.proc.stop()
        raise
    yield champion, challenger
    champion.proc.stop()
    challenger.proc.stop()


@pytest.fixture(scope="module")
def gw(
    bentos: tuple[Simulator, Simulator], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    folder: Path = tmp_path_factory.mktemp("services-policies")
    champion, challenger = bentos[0].url, bentos[1].url
    dead = f"http://127.0.0.1:{free_port()}"
    (folder / "p.yaml").write_text(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {ROUTE}
protocol: json
variants:
  - {{name: champion, weight: 90, endpoints: ["{champion}"]}}
  - {{name: challenger, weight: 10, endpoints: ["{challenger}"]}}
sticky: {{hash_on: "body:customer_id"}}
overrides:
  - {{match: {{header: {{x-cohort: beta}}}}, variant: challenger}}
fallback: [champion]
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: by-header
protocol: json
variants:
  - {{name: champion, weight: 50, endpoints: ["{champion}"]}}
  - {{name: challenger, weight: 50, endpoints: ["{challenger}"]}}
sticky: {{hash_on: "header:x-user-id"}}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: half-dead
protocol: json
variants:
  - {{name: gone, weight: 1, endpoints: ["{dead}"]}}
  - {{name: alive, weight: 0, endpoints: ["{champion}"]}}
fallback: [alive]
"""
    )
    gateway = start_gateway(folder)
    yield gateway
    gateway.proc.stop()


def classify(client: httpx.Client, route: str, body: dict[str, object], **headers: str) -> str:
    r = client.post(f"/services/{route}/classify", json=body, headers=headers)
    assert r.status_code == 200, r.text
    version: str = r.json()["version"]
    assert r.headers["x-switchyard-variant"] == ("champion" if version == "1" else "challenger")
    return version


def test_predict_passes_through(gw: GatewayProc) -> None:
    with httpx.Client(base_url=gw.url) as client:
        r = client.post(
            f"/services/{ROUTE}/predict",
            json={"features": [FEATURES, FEATURES]},
            headers={"x-cohort": "beta"},
        )
        assert r.status_code == 200
        probabilities = r.json()
        assert len(probabilities) == 2 and 0.0 < probabilities[0] < 1.0
        assert r.headers["x-switchyard-route"] == ROUTE
        assert r.headers["server"].startswith("BentoML")  # the service's own headers


def test_canary_split_and_body_field_stickiness(gw: GatewayProc) -> None:
    versions: Counter[str] = Counter()
    with httpx.Client(base_url=gw.url) as client:
        first: dict[str, str] = {}
        for i in range(150):
            customer = f"customer-{i}"
            first[customer] = classify(
                client, ROUTE, {"features": FEATURES, "customer_id": customer}
            )
            versions[first[customer]] += 1
        assert 5 <= versions["2"] <= 35, versions
        for customer in list(first)[:15]:
            again = classify(client, ROUTE, {"features": FEATURES, "customer_id": customer})
            assert again == first[customer]
        assert {classify(client, ROUTE, {"features": FEATURES}, **{"x-cohort": "beta"})} == {"2"}


def test_header_stickiness(gw: GatewayProc) -> None:
    with httpx.Client(base_url=gw.url) as client:
        seen = {
            user: {
                classify(client, "by-header", {"features": FEATURES}, **{"x-user-id": user})
                for _ in range(4)
            }
            for user in ("ann", "bob", "cy", "dee", "eve", "fay")
        }
    assert all(len(v) == 1 for v in seen.values())
    assert set().union(*seen.values()) == {"1", "2"}


def test_fallback_when_the_backend_is_dead(gw: GatewayProc) -> None:
    with httpx.Client(base_url=gw.url) as client:
        for _ in range(3):
            r = client.post("/services/half-dead/classify", json={"features": FEATURES})
            assert r.status_code == 200 and r.json()["version"] == "1"
            assert r.headers["x-switchyard-variant"] == "alive"
    assert gw.metric("switchyard_fallbacks_total", route="half-dead") >= 3


def test_gateway_errors_and_service_errors(gw: GatewayProc) -> None:
    with httpx.Client(base_url=gw.url) as client:
        r = client.post("/services/no-such-service/predict", json={})
        assert r.status_code == 404 and "no-such-service" in r.json()["error"]
        r = client.post(f"/services/{ROUTE}/predict", content=b'{"features": [')
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = client.get(f"/services/{ROUTE}/predict")
        assert r.status_code == 405 and isinstance(r.json()["error"], str)
        # The service's own answers pass through untouched: its 404, its validation error.
        r = client.post(f"/services/{ROUTE}/no-such-api", json={})
        assert r.status_code == 404 and r.text == "Not Found"
        r = client.post(f"/services/{ROUTE}/predict", json={"features": "oops"})
        assert r.status_code == 400 and "detail" in r.json()
