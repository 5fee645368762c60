"""Triton's own clients against the real Triton server, no gateway in between.

These pin down what real Triton does with the stage's models (the numbers, the streamed
responses, the errors), which is what the gateway tests then expect through the gateway,
and check that `switchyard simulate kserve` answers the same numbers for versions 1
and 2 as the real champion and challenger.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from gateway.simulate.kserve_models import weights_for
from tests.backends.triton.fraud_model import (
    CHALLENGER,
    CHAMPION,
    FEATURES,
    INDEX,
    INPUT,
    MODELS,
    OUTPUT,
    STREAM,
    sample_features,
    which_model,
)
from tests.backends.triton.triton_proc import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.timeout(180)]

ROWS = sample_features(3, seed=11)


@pytest.fixture
def http(triton: TritonServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(triton.http_hostport)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def grpc(triton: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton.grpc_hostport)
    try:
        yield client
    finally:
        client.close()


def http_input(rows: np.ndarray, binary: bool = False) -> httpclient.InferInput:
    tensor = httpclient.InferInput(INPUT, list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    return tensor


def grpc_input(rows: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(INPUT, list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return tensor


def test_models_are_the_simulators_versions_1_and_2() -> None:
    # The quick start's simulated fraud detector and this real one must answer alike.
    for name, version in ((CHAMPION, "1"), (CHALLENGER, "2")):
        model = MODELS[name]
        assert (*model.weights, model.bias) == weights_for(version, len(FEATURES))
    champion, challenger = (MODELS[n].predict(ROWS) for n in (CHAMPION, CHALLENGER))
    assert np.abs(champion - challenger).min() > 0.01  # tellable apart by the numbers


def test_http_metadata_and_readiness(http: httpclient.InferenceServerClient) -> None:
    assert http.is_server_live() and http.is_server_ready()
    for name in (CHAMPION, CHALLENGER, STREAM):
        assert http.is_model_ready(name)
    meta = http.get_model_metadata(CHAMPION)
    assert meta["inputs"] == [{"name": INPUT, "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, 1]}]
    assert not http.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_infer_both_versions(http: httpclient.InferenceServerClient, binary: bool) -> None:
    for name in (CHAMPION, CHALLENGER):
        result = http.infer(
            name,
            [http_input(ROWS, binary)],
            outputs=[httpclient.InferRequestedOutput(OUTPUT, binary_data=binary)],
        )
        assert which_model(ROWS, result.as_numpy(OUTPUT)) == name
        assert result.get_response()["model_name"] == name


def test_grpc_infer_both_versions(grpc: grpcclient.InferenceServerClient) -> None:
    assert grpc.is_server_live() and grpc.is_model_ready(CHALLENGER)
    for name in (CHAMPION, CHALLENGER):
        result = grpc.infer(name, [grpc_input(ROWS)])
        assert which_model(ROWS, result.as_numpy(OUTPUT)) == name


async def test_http_aio_client(triton: TritonServer) -> None:
    client = aiohttpclient.InferenceServerClient(triton.http_hostport)
    try:
        assert await client.is_model_ready(CHALLENGER)
        tensor = aiohttpclient.InferInput(INPUT, list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS)
        result = await client.infer(CHALLENGER, [tensor])
        assert which_model(ROWS, result.as_numpy(OUTPUT)) == CHALLENGER
    finally:
        await client.close()


def stream_rows(client: grpcclient.InferenceServerClient, rows: np.ndarray) -> list[Any]:
    """Every response of one ModelStreamInfer request to fraud-stream, final one included."""
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(
            STREAM, [grpc_input(rows)], request_id="r1", enable_empty_final_response=True
        )
        got = []
        while True:
            result, error = responses.get(timeout=20)
            assert error is None, error
            got.append(result)
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return got
    finally:
        client.stop_stream()


def test_grpc_stream_one_response_per_row(grpc: grpcclient.InferenceServerClient) -> None:
    responses = stream_rows(grpc, ROWS)
    *rows, final = responses
    assert len(rows) == len(ROWS) and not final.get_response().outputs
    expected = MODELS[CHAMPION].predict(ROWS)
    for i, response in enumerate(rows):
        assert response.get_response().id == "r1"
        assert response.as_numpy(INDEX).tolist() == [i]
        np.testing.assert_allclose(response.as_numpy(OUTPUT), expected[i : i + 1], atol=1e-6)


def test_http_errors_bad_tensors_400_unknown_model_404(
    http: httpclient.InferenceServerClient,
) -> None:
    wrong_shape = np.zeros((2, 3), np.float32)
    with pytest.raises(InferenceServerException) as caught:
        http.infer(CHAMPION, [http_input(wrong_shape)])
    assert caught.value.status() == "400" and "shape" in caught.value.message()
    wrong_type = httpclient.InferInput(INPUT, [1, 4], "INT32")
    wrong_type.set_data_from_numpy(np.zeros((1, 4), np.int32))
    with pytest.raises(InferenceServerException) as caught:
        http.infer(CHAMPION, [wrong_type])
    assert caught.value.status() == "400" and "data-type" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        http.infer("no-such-model", [http_input(ROWS)])
    assert caught.value.status() == "404" and "no-such-model" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        http.infer(CHAMPION, [http_input(ROWS)], model_version="9")
    assert caught.value.status() == "404" and "version 9" in caught.value.message()
    # A decoupled model answers only through gRPC streams.
    with pytest.raises(InferenceServerException) as caught:
        http.infer(STREAM, [http_input(ROWS)])
    assert caught.value.status() == "501" and "decoupled" in caught.value.message()


def test_grpc_errors_carry_status_codes(grpc: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer(CHAMPION, [grpc_input(np.zeros((2, 3), np.float32))])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer("no-such-model", [grpc_input(ROWS)])
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    # A decoupled model answers only through the stream.
    with pytest.raises(InferenceServerException) as caught:
        grpc.infer(STREAM, [grpc_input(ROWS)])
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
