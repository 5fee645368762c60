"""tritonclient (HTTP, sync and asyncio), unchanged, through the real gateway process to
KServe simulators: inference with JSON and binary tensors, metadata and readiness, the
90/10 canary, stickiness, overrides, fallback to a live variant, and bad inputs.

Champion and challenger are separate simulators serving versions 1 and 2 (different
weights), so every response's `model_version` says which variant answered.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from tests.procs import GatewayProc, KServeSimulator, start_gateway, start_kserve

ROUTE = "fraud-detector"
ROW = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def policies(champion: str, challenger: str, dead: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {ROUTE}
protocol: kserve-v2
variants:
  - {{name: champion, weight: 90, endpoints: ["{champion}"], model: fraud-detector,
     model_version: "1"}}
  - {{name: challenger, weight: 10, endpoints: ["{challenger}"], model: fraud-detector,
     model_version: "2"}}
sticky: {{hash_on: "header:x-user-id"}}
overrides:
  - {{match: {{header: {{x-cohort: beta}}}}, variant: challenger}}
fallback: [champion]
max_body_bytes: 65536
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: half-dead
protocol: kserve-v2
variants:
  - {{name: gone, weight: 100, endpoints: ["{dead}"], model: fraud-detector}}
  - {{name: alive, weight: 0, endpoints: ["{champion}"], model: fraud-detector}}
fallback: [alive]
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {{name: main, endpoints: ["{champion}"]}}
"""


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[KServeSimulator, KServeSimulator]]:
    champion = start_kserve("kserve-champion", "--model-version", "1", grpc=False)
    try:
        challenger = start_kserve("kserve-challenger", "--model-version", "2", grpc=False)
    except Exception:
        champion.proc.stop()
        raise
    yield champion, challenger
    champion.proc.stop()
    challenger.proc.stop()


@pytest.fixture(scope="module")
def gw(
    sims: tuple[KServeSimulator, KServeSimulator], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    folder: Path = tmp_path_factory.mktemp("kserve-policies")
    dead = f"http://127.0.0.1:{free_port()}"
    (folder / "p.yaml").write_text(policies(sims[0].url, sims[1].url, dead))
    gateway = start_gateway(folder, "--seed", "7")
    yield gateway
    gateway.proc.stop()


@pytest.fixture
def client(gw: GatewayProc) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    try:
        yield c
    finally:
        c.close()


def features(binary: bool, rows: np.ndarray = ROW) -> httpclient.InferInput:
    tensor = httpclient.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


def direct(sim: KServeSimulator, version: str) -> np.ndarray:
    c = httpclient.InferenceServerClient(sim.http_address)
    try:
        out = c.infer("fraud-detector", [features(True)], model_version=version)
        result: np.ndarray = out.as_numpy("probability")
        return result
    finally:
        c.close()


def test_health_metadata_and_readiness(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "switchyard"
    assert client.is_model_ready(ROUTE)
    meta = client.get_model_metadata(ROUTE, headers={"x-user-id": "meta"})
    assert meta["name"] == ROUTE  # the route, not the backend's model name
    assert meta["inputs"][0]["name"] == "features"
    config = client.get_model_config(ROUTE)
    assert config["name"] == ROUTE
    assert not client.is_model_ready("no-such-model")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no-such-model")
    assert info.value.status() == "404" and "no-such-model" in info.value.message()


@pytest.mark.parametrize("binary", [True, False])
def test_infer_binary_and_json_tensors_match_the_backend(
    client: httpclient.InferenceServerClient,
    sims: tuple[KServeSimulator, KServeSimulator],
    binary: bool,
) -> None:
    outputs = [httpclient.InferRequestedOutput("probability", binary_data=binary)]
    result = client.infer(ROUTE, [features(binary)], outputs=outputs, headers={"x-cohort": "beta"})
    response = result.get_response()
    assert response["model_version"] == "2"
    got = result.as_numpy("probability")
    assert got.shape == (1, 1)
    expected = direct(sims[1], "2")
    if binary:
        assert got.tobytes() == expected.tobytes()  # the raw bytes crossed untouched
    else:
        assert got[0, 0] == pytest.approx(float(expected[0, 0]), rel=1e-6)


def test_canary_split_stickiness_and_metrics(
    client: httpclient.InferenceServerClient, gw: GatewayProc
) -> None:
    before = {
        v: gw.metric("switchyard_requests_total", route=ROUTE, variant=v)
        for v in ("champion", "challenger")
    }
    versions: Counter[str] = Counter()
    by_user: dict[str, str] = {}
    for i in range(200):
        user = f"user-{i}"
        result = client.infer(ROUTE, [features(True)], headers={"x-user-id": user})
        version = result.get_response()["model_version"]
        versions[version] += 1
        by_user[user] = version
    # CRC-32 of 200 distinct ids on a 90/10 line: deterministic, near 10% challenger.
    assert 8 <= versions["2"] <= 40, versions
    assert versions["1"] + versions["2"] == 200
    for user in list(by_user)[:20]:  # the same user lands on the same version again
        again = client.infer(ROUTE, [features(False)], headers={"x-user-id": user})
        assert again.get_response()["model_version"] == by_user[user]
    after = {
        v: gw.metric("switchyard_requests_total", route=ROUTE, variant=v)
        for v in ("champion", "challenger")
    }
    served = Counter(by_user[u] for u in list(by_user)[:20])
    assert after["champion"] - before["champion"] == versions["1"] + served["1"]
    assert after["challenger"] - before["challenger"] == versions["2"] + served["2"]


def test_override_header_and_response_headers(gw: GatewayProc) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    for _ in range(5):
        r = httpx.post(
            f"{gw.url}/v2/models/{ROUTE}/infer",
            json=body,
            headers={"x-cohort": "beta", "x-user-id": "always-champion?"},
        )
        assert r.status_code == 200
        assert r.headers["x-switchyard-variant"] == "challenger"
        assert r.headers["x-switchyard-route"] == ROUTE
        assert r.json()["model_version"] == "2"


def test_fallback_when_the_chosen_backend_is_dead(
    client: httpclient.InferenceServerClient, gw: GatewayProc
) -> None:
    before = gw.metric("switchyard_fallbacks_total", route="half-dead")
    for _ in range(3):
        result = client.infer("half-dead", [features(True)])
        assert result.get_response()["model_name"] == "fraud-detector"
        assert result.as_numpy("probability").shape == (1, 1)
    assert gw.metric("switchyard_fallbacks_total", route="half-dead") - before == 3
    assert gw.metric("switchyard_requests_total", route="half-dead", variant="alive") >= 3


def test_bad_inputs_get_a_4xx_with_a_message(
    client: httpclient.InferenceServerClient, gw: GatewayProc
) -> None:
    wrong_shape = features(False)
    wrong_shape.set_shape([1, 5])  # 4 values, a shape that holds 5
    with pytest.raises(InferenceServerException) as info:
        client.infer(ROUTE, [wrong_shape])
    assert info.value.status() == "400"
    assert "shape [1, 5] holds 5 elements, but 'data' has 4" in info.value.message()
    wrong_binary = features(True)
    wrong_binary.set_shape([2, 4])
    with pytest.raises(InferenceServerException) as info:
        client.infer(ROUTE, [wrong_binary])
    assert info.value.status() == "400" and "binary_data_size" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", [features(True)])
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException) as info:
        client.infer("chat", [features(True)])
    assert info.value.status() == "400" and "speaks openai" in info.value.message()
    url = f"{gw.url}/v2/models/{ROUTE}/infer"
    for content, why in [
        (b'{"inputs": [', "not valid JSON"),
        (
            b'{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "F32", "data": []}]}',
            "not a v2 datatype",
        ),
    ]:
        r = httpx.post(url, content=content)
        assert r.status_code == 400 and why in r.json()["error"]
    r = httpx.post(url, content=b"{" + b" " * 70_000 + b"}")
    assert r.status_code == 413 and "limit of 65536 bytes" in r.json()["error"]


async def test_asyncio_client(gw: GatewayProc) -> None:
    client = aiohttpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    try:
        assert await client.is_server_ready()
        assert await client.is_model_ready(ROUTE)
        meta = await client.get_model_metadata(ROUTE)
        assert meta["name"] == ROUTE
        tensor = aiohttpclient.InferInput("features", [1, 4], "FP32")
        tensor.set_data_from_numpy(ROW, binary_data=True)
        seen = set()
        for _ in range(10):
            result = await client.infer(ROUTE, [tensor], headers={"x-user-id": "async-user"})
            seen.add(result.get_response()["model_version"])
            assert result.as_numpy("probability").shape == (1, 1)
        assert len(seen) == 1  # sticky
        with pytest.raises(InferenceServerException) as info:
            await client.infer("no-such-model", [tensor])
        assert info.value.status() == "404"
    finally:
        await client.close()
