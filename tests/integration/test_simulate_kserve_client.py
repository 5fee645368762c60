"""Triton's own clients (`tritonclient` HTTP and gRPC, sync and asyncio) against the
KServe simulator, started as users start it (`switchyard simulate kserve`).

The clients are used unchanged: what they accept from the simulator is what they
accept from Triton, so the gateway's KServe fronts can be built and tested against it.
"""

from __future__ import annotations

import math
import queue
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from gateway.simulate.kserve_models import weights_for
from tests.procs import KServeSimulator, start_kserve

FEATURES = np.array(
    [[0.5, -1.0, 2.0, 0.25], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, 1.5]], np.float32
)


def expected(version: str, rows: np.ndarray) -> np.ndarray:
    """The probabilities a model version computes, as float32 [rows, 1]."""
    weights = weights_for(version, rows.shape[1])
    out = []
    for row in rows.astype(np.float64):
        z = sum(w * float(x) for w, x in zip(weights, row, strict=False)) + weights[-1]
        out.append(1.0 / (1.0 + math.exp(-z)))
    return np.array(out, np.float32).reshape(-1, 1)


@pytest.fixture(scope="module")
def sim() -> Iterator[KServeSimulator]:
    """One simulator serving versions 1 (champion) and 2 (challenger), HTTP and gRPC."""
    simulator = start_kserve("kserve-sim", "--model-version", "1", "--model-version", "2")
    try:
        yield simulator
    finally:
        simulator.proc.stop()


@pytest.fixture
def client(sim: KServeSimulator) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(sim.http_address)
    try:
        yield c
    finally:
        c.close()


def features_input(rows: np.ndarray, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


def by_model(sim: KServeSimulator) -> dict[str, dict[str, int]]:
    stats = sim.stats()["by_model"]
    assert isinstance(stats, dict)
    return stats


# -- HTTP, sync ---------------------------------------------------------------------------


def test_http_server_and_model_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "triton" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("fraud-detector")
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["outputs"] == [{"name": "probability", "datatype": "FP32", "shape": [-1, 1]}]
    assert client.get_model_metadata("fraud-detector", "2")["name"] == "fraud-detector"
    assert client.is_model_ready("fraud-detector")
    assert client.is_model_ready("fraud-detector", "2")
    assert not client.is_model_ready("fraud-detector", "7")
    assert not client.is_model_ready("no-such-model")
    config = client.get_model_config("fraud-detector-stream")
    assert config["model_transaction_policy"] == {"decoupled": True}
    index = client.get_model_repository_index()
    assert {"name": "fraud-detector", "version": "2", "state": "READY"} in index


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False, None])
def test_http_infer_json_and_binary(
    client: httpclient.InferenceServerClient, binary_in: bool, binary_out: bool | None
) -> None:
    # None: no outputs requested, which makes tritonclient ask for binary_data_output.
    outputs = None
    if binary_out is not None:
        outputs = [httpclient.InferRequestedOutput("probability", binary_data=binary_out)]
    result = client.infer(
        "fraud-detector", [features_input(FEATURES, binary_in)], outputs=outputs, request_id="r1"
    )
    got = result.as_numpy("probability")
    assert got is not None and got.dtype == np.float32 and got.shape == (3, 1)
    np.testing.assert_array_equal(got, expected("2", FEATURES))  # latest version answers
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "fraud-detector",
        "2",
        "r1",
    )


def test_http_versions_answer_differently(
    sim: KServeSimulator, client: httpclient.InferenceServerClient
) -> None:
    before = by_model(sim).get("fraud-detector", {})
    one = client.infer("fraud-detector", [features_input(FEATURES, True)], model_version="1")
    two = client.infer("fraud-detector", [features_input(FEATURES, True)], model_version="2")
    np.testing.assert_array_equal(one.as_numpy("probability"), expected("1", FEATURES))
    np.testing.assert_array_equal(two.as_numpy("probability"), expected("2", FEATURES))
    assert not np.allclose(one.as_numpy("probability"), two.as_numpy("probability"))
    after = by_model(sim)["fraud-detector"]
    assert after["1"] == before.get("1", 0) + 1 and after["2"] == before.get("2", 0) + 1


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_compression(client: httpclient.InferenceServerClient, algorithm: str) -> None:
    result = client.infer(
        "fraud-detector",
        [features_input(FEATURES, True)],
        model_version="1",
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("probability"), expected("1", FEATURES))


def test_http_errors_are_triton_errors(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [features_input(FEATURES, True)])
    assert unknown.value.status() == "404"  # as real Triton answers /infer
    assert "Request for unknown model: 'no-such-model' is not found" in unknown.value.message()
    with pytest.raises(InferenceServerException) as version:
        client.infer("fraud-detector", [features_input(FEATURES, True)], model_version="9")
    assert version.value.status() == "404"
    wide = np.ones((2, 5), np.float32)
    with pytest.raises(InferenceServerException) as shape:
        client.infer("fraud-detector", [features_input(wide, False)])
    assert shape.value.status() == "400"
    assert "unexpected shape for input 'features'" in shape.value.message()
    doubles = httpclient.InferInput("features", [1, 4], "FP64")
    doubles.set_data_from_numpy(np.ones((1, 4), np.float64))
    with pytest.raises(InferenceServerException) as dtype:
        client.infer("fraud-detector", [doubles])
    assert "data-type is 'FP64', but model 'fraud-detector' expects 'FP32'" in dtype.value.message()
    stranger = httpclient.InferInput("amount", [1], "FP32")
    stranger.set_data_from_numpy(np.ones(1, np.float32))
    with pytest.raises(InferenceServerException) as name:
        client.infer("fraud-detector", [stranger])
    assert "unexpected inference input 'amount'" in name.value.message()
    with pytest.raises(InferenceServerException) as decoupled:
        client.infer("fraud-detector-stream", [features_input(FEATURES, True)])
    assert decoupled.value.status() == "501"


def test_http_faults_by_header(
    sim: KServeSimulator, client: httpclient.InferenceServerClient
) -> None:
    before = sim.stats()["faults"]
    assert isinstance(before, dict)
    with pytest.raises(InferenceServerException) as failed:
        client.infer(
            "fraud-detector", [features_input(FEATURES, True)], headers={"x-sim-status": "503"}
        )
    assert failed.value.status() == "503" and "simulated failure" in failed.value.message()
    after = sim.stats()["faults"]
    assert isinstance(after, dict) and after["status"] == before.get("status", 0) + 1


# -- HTTP, asyncio ------------------------------------------------------------------------


async def test_http_aio_client(sim: KServeSimulator) -> None:
    client = aiohttpclient.InferenceServerClient(sim.http_address)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("fraud-detector", "1")
        meta = await client.get_model_metadata("fraud-detector")
        assert meta["platform"] == "python"
        for binary in (True, False):
            tensor = aiohttpclient.InferInput("features", list(FEATURES.shape), "FP32")
            tensor.set_data_from_numpy(FEATURES, binary_data=binary)
            output = aiohttpclient.InferRequestedOutput("probability", binary_data=binary)
            result = await client.infer("fraud-detector", [tensor], "1", outputs=[output])
            np.testing.assert_array_equal(result.as_numpy("probability"), expected("1", FEATURES))
        with pytest.raises(InferenceServerException) as unknown:
            await client.get_model_metadata("no-such-model")
        assert "Request for unknown model" in unknown.value.message()
    finally:
        await client.close()


# -- gRPC, sync ---------------------------------------------------------------------------


@pytest.fixture
def grpc_client(sim: KServeSimulator) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(sim.grpc)
    try:
        yield c
    finally:
        c.close()


def grpc_features(rows: np.ndarray, module: Any = grpcclient) -> Any:
    tensor = module.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


def test_grpc_health_and_metadata(grpc_client: grpcclient.InferenceServerClient) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    meta = grpc_client.get_server_metadata(as_json=True)
    assert meta["name"] == "triton" and "binary_tensor_data" in meta["extensions"]
    model = grpc_client.get_model_metadata("fraud-detector", as_json=True)
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert grpc_client.is_model_ready("fraud-detector", "1")
    assert not grpc_client.is_model_ready("fraud-detector", "7")
    assert not grpc_client.is_model_ready("no-such-model")
    config = grpc_client.get_model_config("fraud-detector-stream", as_json=True)
    assert config["config"]["model_transaction_policy"] == {"decoupled": True}
    index = grpc_client.get_model_repository_index(as_json=True)
    assert {"name": "fraud-detector", "version": "1", "state": "READY"} in index["models"]


def test_grpc_infer_versions(
    sim: KServeSimulator, grpc_client: grpcclient.InferenceServerClient
) -> None:
    before = by_model(sim).get("fraud-detector", {})
    latest = grpc_client.infer("fraud-detector", [grpc_features(FEATURES)], request_id="g1")
    np.testing.assert_array_equal(latest.as_numpy("probability"), expected("2", FEATURES))
    response = latest.get_response()
    assert (response.model_version, response.id) == ("2", "g1")
    one = grpc_client.infer(
        "fraud-detector",
        [grpc_features(FEATURES)],
        model_version="1",
        outputs=[grpcclient.InferRequestedOutput("probability")],
    )
    np.testing.assert_array_equal(one.as_numpy("probability"), expected("1", FEATURES))
    after = by_model(sim)["fraud-detector"]
    assert after["2"] == before.get("2", 0) + 1 and after["1"] == before.get("1", 0) + 1


def test_grpc_errors_carry_status_codes(grpc_client: grpcclient.InferenceServerClient) -> None:
    cases = [
        ("no-such-model", "", FEATURES, "StatusCode.NOT_FOUND", "Request for unknown model"),
        ("fraud-detector", "9", FEATURES, "StatusCode.NOT_FOUND", "version 9 is not found"),
        ("fraud-detector", "", np.ones((1, 3), np.float32), "StatusCode.INVALID_ARGUMENT", "shape"),
        ("fraud-detector-stream", "", FEATURES, "StatusCode.UNIMPLEMENTED", "decoupled"),
    ]
    for model, version, rows, status, text in cases:
        with pytest.raises(InferenceServerException) as failed:
            grpc_client.infer(model, [grpc_features(rows)], model_version=version)
        assert failed.value.status() == status, model
        assert text in failed.value.message()


def test_grpc_faults_by_metadata(
    sim: KServeSimulator, grpc_client: grpcclient.InferenceServerClient
) -> None:
    with pytest.raises(InferenceServerException) as unavailable:
        grpc_client.infer(
            "fraud-detector", [grpc_features(FEATURES)], headers={"x-sim-status": "503"}
        )
    assert unavailable.value.status() == "StatusCode.UNAVAILABLE"
    with pytest.raises(InferenceServerException) as garbage:
        grpc_client.infer(
            "fraud-detector", [grpc_features(FEATURES)], headers={"x-sim-garbage": "1"}
        )
    assert garbage.value.status() == "StatusCode.INTERNAL"
    with pytest.raises(InferenceServerException) as hung:
        grpc_client.infer(
            "fraud-detector",
            [grpc_features(FEATURES)],
            headers={"x-sim-hang": "1"},
            client_timeout=0.5,
        )
    assert hung.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    with pytest.raises(InferenceServerException) as bad:
        grpc_client.infer(
            "fraud-detector", [grpc_features(FEATURES)], headers={"x-sim-status": "teapot"}
        )
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_grpc_stream_infer_decoupled(
    sim: KServeSimulator, grpc_client: grpcclient.InferenceServerClient
) -> None:
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: received.put((result, error)))
    try:
        grpc_client.async_stream_infer(
            "fraud-detector-stream", [grpc_features(FEATURES)], model_version="1", request_id="s1"
        )
        grpc_client.async_stream_infer("no-such-model", [grpc_features(FEATURES)])
        grpc_client.async_stream_infer(
            "fraud-detector-stream",
            [grpc_features(FEATURES[:1])],
            model_version="2",
            enable_empty_final_response=True,
        )
        got = [received.get(timeout=30) for _ in range(3 + 1 + 3 + 1)]
    finally:
        grpc_client.stop_stream()
    first = got[:3]
    assert all(error is None for _, error in first)
    assert [int(r.as_numpy("index")[0]) for r, _ in first] == [0, 1, 2]
    for result, _ in first:
        np.testing.assert_array_equal(result.as_numpy("probability"), expected("1", FEATURES))
        assert result.get_response().id == "s1"
    assert got[3][0] is None and "Request for unknown model" in got[3][1].message()
    final = [r.get_response() for r, _ in got[4:]]
    flags = [r.parameters["triton_final_response"].bool_param for r in final]
    assert flags == [False, False, False, True] and not final[-1].outputs
    assert int(sim.stats()["stream_responses"]) >= 6  # type: ignore[call-overload]


def test_grpc_stream_cut_ends_with_an_error(sim: KServeSimulator) -> None:
    received: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(sim.grpc)
    try:
        client.start_stream(
            callback=lambda result, error: received.put((result, error)),
            headers={"x-sim-cut-after": "2"},
        )
        client.async_stream_infer("fraud-detector-stream", [grpc_features(FEATURES)])
        got = [received.get(timeout=30) for _ in range(3)]
        client.stop_stream()
    finally:
        client.close()
    assert [error is None for _, error in got] == [True, True, False]
    assert got[2][1].status() == "StatusCode.UNAVAILABLE"
    assert "simulated stream cut" in got[2][1].message()


# -- gRPC, asyncio ------------------------------------------------------------------------


async def test_grpc_aio_client_and_stream(sim: KServeSimulator) -> None:
    client = aiogrpcclient.InferenceServerClient(sim.grpc)
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("fraud-detector")
        meta = await client.get_model_metadata("fraud-detector", as_json=True)
        assert meta["platform"] == "python"
        result = await client.infer(
            "fraud-detector", [grpc_features(FEATURES, aiogrpcclient)], model_version="1"
        )
        np.testing.assert_array_equal(result.as_numpy("probability"), expected("1", FEATURES))

        async def requests() -> AsyncIterator[dict[str, Any]]:
            for version in ("1", "2"):
                yield {
                    "model_name": "fraud-detector-stream",
                    "model_version": version,
                    "inputs": [grpc_features(FEATURES, aiogrpcclient)],
                }

        seen: list[tuple[str, int]] = []
        stream = client.stream_infer(requests(), headers={"x-sim-tokens": "2"})
        async for streamed, error in stream:
            assert error is None
            response = streamed.get_response()
            version = response.model_version
            np.testing.assert_array_equal(
                streamed.as_numpy("probability"), expected(version, FEATURES)
            )
            seen.append((version, int(streamed.as_numpy("index")[0])))
        assert seen == [("1", 0), ("1", 1), ("2", 0), ("2", 1)]
    finally:
        await client.close()
