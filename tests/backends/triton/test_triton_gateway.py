"""The real gateway in front of real Triton: tritonclient HTTP and gRPC, unchanged.

One route, `fraud-detector`, splits 90/10 between the champion and challenger models of
one Triton server (the variants' `model` names them), and `fraud-detector-stream`
serves the decoupled model through ModelStreamInfer. Which model answered is read off
the numbers (the two models score every transaction differently), so the split is
counted from what the client got, whatever the gateway reports, and then checked
against the gateway's own request counters too.

Split bounds are binomial quantiles at a 1e-6 two-sided miss rate: a correct 90/10
gateway fails them about once in a million runs, while a wrong split (50/50, or no
challenger at all) fails every time.
"""

from __future__ import annotations

import queue
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc as grpclib
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from scipy.stats import binom
from tritonclient.utils import InferenceServerException

from tests.backends.triton.fraud_model import (
    CHALLENGER,
    CHAMPION,
    INDEX,
    INPUT,
    MODELS,
    OUTPUT,
    STREAM,
    sample_features,
    which_model,
)
from tests.backends.triton.triton_proc import TritonServer, canary_policy
from tests.procs import GatewayProc

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]

ROUTE = "fraud-detector"
STREAM_ROUTE = "fraud-detector-stream"
ROWS = sample_features(2, seed=5)
SPLIT_REQUESTS = 400
CHALLENGER_SHARE = 0.10
USERS = 60


def policies(triton: TritonServer) -> tuple[str, str]:
    """The canary route and the streaming route, both on the one Triton server."""
    endpoint = f"http://127.0.0.1:{triton.http_port}"
    canary = canary_policy(
        triton,
        ROUTE,
        "overrides:\n  - match: {header: {x-cohort: beta}}\n    variant: challenger\n",
    )
    stream = f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {STREAM_ROUTE}
protocol: kserve-v2
variants:
  - name: champion
    endpoints: [{endpoint}]
    model: {STREAM}
    grpc_port: {triton.grpc_port}
"""
    return canary, stream


@pytest.fixture
def gw(gateway: Callable[..., GatewayProc], triton: TritonServer) -> GatewayProc:
    started = gateway(*policies(triton), extra=("--grpc-port", "0"))
    assert started.grpc, "the gateway printed no gRPC address"
    return started


@pytest.fixture
def http(gw: GatewayProc) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(gw.url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def grpc(gw: GatewayProc) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(gw.grpc)
    try:
        yield client
    finally:
        client.close()


def http_infer(client: httpclient.InferenceServerClient, **headers: str) -> str:
    tensor = httpclient.InferInput(INPUT, list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=True)
    result = client.infer(ROUTE, [tensor], headers=headers or None)
    return which_model(ROWS, result.as_numpy(OUTPUT))


def grpc_infer(client: grpcclient.InferenceServerClient, **headers: str) -> str:
    tensor = grpcclient.InferInput(INPUT, list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    result = client.infer(ROUTE, [tensor], headers=headers or None)
    return which_model(ROWS, result.as_numpy(OUTPUT))


def assert_canary_split(counts: Counter[str], total: int) -> None:
    low, high = (
        binom.ppf(0.5e-6, total, CHALLENGER_SHARE),
        binom.isf(0.5e-6, total, CHALLENGER_SHARE),
    )
    assert counts[CHAMPION] + counts[CHALLENGER] == total
    assert low <= counts[CHALLENGER] <= high, f"{counts} is not 90/10 (bounds {low}..{high})"


def variant_requests(gw: GatewayProc) -> dict[str, float]:
    return {
        v: gw.metric("switchyard_requests_total", route=ROUTE, variant=v)
        for v in ("champion", "challenger")
    }


def test_metadata_and_readiness_name_the_route(http: httpclient.InferenceServerClient) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready(ROUTE)
    meta = http.get_model_metadata(ROUTE)
    # The backend's model is fraud-champion or fraud-challenger; the client sees its route.
    assert meta["name"] == ROUTE
    assert meta["inputs"] == [{"name": INPUT, "datatype": "FP32", "shape": [-1, 4]}]


def test_http_canary_split_90_10(gw: GatewayProc, http: httpclient.InferenceServerClient) -> None:
    counts = Counter(http_infer(http) for _ in range(SPLIT_REQUESTS))
    assert_canary_split(counts, SPLIT_REQUESTS)
    # What the clients got is what the gateway counted.
    assert variant_requests(gw) == {
        "champion": counts[CHAMPION],
        "challenger": counts[CHALLENGER],
    }


def test_grpc_canary_split_90_10(grpc: grpcclient.InferenceServerClient) -> None:
    assert grpc.is_server_live() and grpc.is_model_ready(ROUTE)
    counts = Counter(grpc_infer(grpc) for _ in range(SPLIT_REQUESTS))
    assert_canary_split(counts, SPLIT_REQUESTS)


def test_sticky_user_keeps_one_version_over_http_and_grpc(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    seen: dict[str, set[str]] = {}
    for i in range(USERS):
        user = f"user-{i}"
        answers = {http_infer(http, **{"x-user-id": user}) for _ in range(2)}
        # The same key hashes onto the same variant whichever front it came through.
        answers |= {grpc_infer(grpc, **{"x-user-id": user}) for _ in range(2)}
        seen[user] = answers
    assert all(len(models) == 1 for models in seen.values()), seen
    per_model = Counter(next(iter(models)) for models in seen.values())
    # Sticky keys still spread by weight: some users are on the challenger, most are not.
    assert 0 < per_model[CHALLENGER] < per_model[CHAMPION], per_model


def test_override_header_pins_the_challenger(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    assert {http_infer(http, **{"x-cohort": "beta"}) for _ in range(10)} == {CHALLENGER}
    assert {grpc_infer(grpc, **{"x-cohort": "beta"}) for _ in range(10)} == {CHALLENGER}


def test_stream_infer_through_the_gateway(grpc: grpcclient.InferenceServerClient) -> None:
    rows = sample_features(4, seed=9)
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        tensor = grpcclient.InferInput(INPUT, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        for request_id in ("a", "b"):  # two requests on one stream, answered in order
            grpc.async_stream_infer(
                STREAM_ROUTE, [tensor], request_id=request_id, enable_empty_final_response=True
            )
        got: dict[str, list[Any]] = {"a": [], "b": []}
        finals = 0
        while finals < 2:
            result, error = responses.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                finals += 1
                continue
            got[response.id].append(result)
    finally:
        grpc.stop_stream()
    expected = MODELS[CHAMPION].predict(rows)
    for request_id, results in got.items():
        assert [r.as_numpy(INDEX).tolist() for r in results] == [[i] for i in range(len(rows))]
        for i, r in enumerate(results):
            np.testing.assert_allclose(r.as_numpy(OUTPUT), expected[i : i + 1], atol=1e-6)
        assert all(r.get_response().model_name == STREAM_ROUTE for r in results), request_id


def test_bad_input_http(gw: GatewayProc, http: httpclient.InferenceServerClient) -> None:
    wrong = httpclient.InferInput(INPUT, [2, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 3), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        http.infer(ROUTE, [wrong])
    # Triton's own shape error, relayed: the gateway routes, Triton checks the model.
    assert caught.value.status() == "400" and "shape" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        http.infer("no-such-route", [wrong])
    assert caught.value.status() == "404" and "no-such-route" in caught.value.message()
    # Triton's refusal of a decoupled model over HTTP, relayed.
    right = httpclient.InferInput(INPUT, list(ROWS.shape), "FP32")
    right.set_data_from_numpy(ROWS)
    with pytest.raises(InferenceServerException) as caught:
        http.infer(STREAM_ROUTE, [right])
    assert caught.value.status() == "501" and "decoupled" in caught.value.message()
    # Malformed JSON and a tensor with fewer values than its shape: the gateway's own 400s
    # (tritonclient cannot send either, so httpx does).
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        answer = client.post(f"/v2/models/{ROUTE}/infer", content=b'{"inputs": [')
        assert answer.status_code == 400 and "error" in answer.json()
        answer = client.post(
            f"/v2/models/{ROUTE}/infer",
            json={"inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1, 4], "data": [1]}]},
        )
        assert answer.status_code == 400 and "error" in answer.json()


def test_bad_input_grpc(grpc: grpcclient.InferenceServerClient) -> None:
    wrong = grpcclient.InferInput(INPUT, [2, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 3), np.float32))
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer(ROUTE, [wrong])
    assert caught.value.status() == str(grpclib.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer("no-such-route", [wrong])
    assert caught.value.status() == str(grpclib.StatusCode.NOT_FOUND)
