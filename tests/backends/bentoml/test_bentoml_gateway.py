"""The real gateway in front of real BentoML: `POST /services/fraud-service/predict`.

Route `fraud-service` (protocol json) splits 90/10 between two BentoML services, the
same fraud classifier trained on different seeds. Which one answered is read off the
numbers (each service's scores for the test rows are first taken from it directly), so
the split is counted from what the client got; the gateway's x-switchyard-variant
header and request counters must agree with it. Bounds are binomial quantiles at a
1e-6 two-sided miss rate (see tests/backends/triton/test_triton_gateway.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest
from scipy.stats import binom

from tests.backends.bentoml.bentoml_proc import BentoService
from tests.procs import GatewayProc

pytestmark = [pytest.mark.bentoml, pytest.mark.timeout(300)]

ROUTE = "fraud-service"
ROWS = {"features": [[1.2, 0.4, -0.3, 0.8], [-1.0, -0.5, 0.2, 1.5]]}
SPLIT_REQUESTS = 400
CHALLENGER_SHARE = 0.10
USERS = 60


def policy(champion: BentoService, challenger: BentoService) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {ROUTE}
protocol: json
variants:
  - name: champion
    weight: 90
    endpoints: [{champion.url}]
  - name: challenger
    weight: 10
    endpoints: [{challenger.url}]
sticky: {{hash_on: "header:x-user-id"}}
fallback: [champion]
"""


@pytest.fixture
def gw(
    gateway: Callable[..., GatewayProc], bento: tuple[BentoService, BentoService]
) -> GatewayProc:
    return gateway(policy(*bento))


@pytest.fixture
def client(gw: GatewayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        yield c


@pytest.fixture
def scores(bento: tuple[BentoService, BentoService]) -> dict[str, list[float]]:
    """Each variant's own answer to ROWS, taken from the service directly."""
    with httpx.Client(timeout=10) as direct:
        return {s.variant: direct.post(f"{s.url}/predict", json=ROWS).json() for s in bento}


def predict(client: httpx.Client, scores: dict[str, list[float]], **headers: str) -> str:
    """POST /services/fraud-service/predict; the variant whose numbers came back."""
    answer = client.post(f"/services/{ROUTE}/predict", json=ROWS, headers=headers)
    assert answer.status_code == 200, answer.text
    [variant] = [name for name, expected in scores.items() if answer.json() == expected]
    assert answer.headers["x-switchyard-variant"] == variant
    return variant


def test_canary_split_90_10(
    gw: GatewayProc, client: httpx.Client, scores: dict[str, list[float]]
) -> None:
    assert scores["champion"] != scores["challenger"]
    counts = Counter(predict(client, scores) for _ in range(SPLIT_REQUESTS))
    low = binom.ppf(0.5e-6, SPLIT_REQUESTS, CHALLENGER_SHARE)
    high = binom.isf(0.5e-6, SPLIT_REQUESTS, CHALLENGER_SHARE)
    assert counts["champion"] + counts["challenger"] == SPLIT_REQUESTS
    assert low <= counts["challenger"] <= high, f"{counts} is not 90/10 ({low}..{high})"
    for variant in ("champion", "challenger"):
        counted = gw.metric("switchyard_requests_total", route=ROUTE, variant=variant)
        assert counted == counts[variant]


def test_sticky_user_keeps_one_service(
    client: httpx.Client, scores: dict[str, list[float]]
) -> None:
    seen = {
        f"user-{i}": {predict(client, scores, **{"x-user-id": f"user-{i}"}) for _ in range(3)}
        for i in range(USERS)
    }
    assert all(len(variants) == 1 for variants in seen.values()), seen
    per_variant = Counter(next(iter(v)) for v in seen.values())
    assert 0 < per_variant["challenger"] < per_variant["champion"], per_variant


def test_classify_api_names_the_version(client: httpx.Client) -> None:
    # Any API of the service is reachable: /services/{route}/{api} -> /{api}.
    answer = client.post(
        f"/services/{ROUTE}/classify",
        json={"features": [2.0, 1.5, 1.0, -1.0]},
        headers={"x-user-id": "user-1"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["label"] == "fraud" and body["probability"] > 0.5
    expected = {"champion": "1", "challenger": "2"}[answer.headers["x-switchyard-variant"]]
    assert body["version"] == expected


def test_errors(client: httpx.Client) -> None:
    # BentoML's own 400 validation error for a short row, relayed untouched.
    bad = client.post(f"/services/{ROUTE}/predict", json={"features": [[1.0]]})
    assert bad.status_code == 400 and bad.json()["detail"][0]["type"] == "too_short"
    unknown = client.post("/services/no-such-service/predict", json=ROWS)
    assert unknown.status_code == 404 and "no-such-service" in unknown.json()["error"]
    missing_api = client.post(f"/services/{ROUTE}/no-such-api", json=ROWS)
    assert missing_api.status_code == 404
    malformed = client.post(
        f"/services/{ROUTE}/predict",
        content=b'{"features": [',
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 400 and "error" in malformed.json()
