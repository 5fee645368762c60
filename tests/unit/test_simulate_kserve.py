"""The KServe v2 simulator in-process: wire details the Triton clients never exercise
(hand-built binary bodies, malformed tensors, typed gRPC contents), faults, counters,
options and the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from gateway.simulate.cli import add_backends
from gateway.simulate.kserve import KServeOptions, KServeServer, options_from_args, serve_kserve
from gateway.simulate.kserve_grpc import grpc_code
from gateway.simulate.kserve_models import PRESET_WEIGHTS, ModelRepository, SimModel, weights_for
from gateway.simulate.kserve_tensor import TensorError, TensorSpec, flatten_json, to_float32

INFER = "/v2/models/fraud-detector/infer"
ROW = [0.5, -1.0, 2.0, 0.25]


def probability(version: str, row: list[float]) -> float:
    weights = weights_for(version, len(row))
    z = sum(w * x for w, x in zip(weights, row, strict=False)) + weights[-1]
    return to_float32([1.0 / (1.0 + 2.718281828459045 ** (-z))])[0]


def json_body(*rows: list[float], **extra: Any) -> dict[str, Any]:
    tensor = {"name": "features", "datatype": "FP32", "shape": [len(rows), 4], "data": list(rows)}
    return {"inputs": [tensor], **extra}


def binary_body(
    rows: list[list[float]], *, declared: int | None = None, tail: bytes = b""
) -> tuple[bytes, dict[str, str]]:
    raw = struct.pack(f"<{4 * len(rows)}f", *(x for row in rows for x in row))
    header = {
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": [len(rows), 4],
                "parameters": {"binary_data_size": len(raw) if declared is None else declared},
            }
        ],
        "outputs": [{"name": "probability", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    return head + raw + tail, {"inference-header-content-length": str(len(head))}


@pytest.fixture
async def server() -> AsyncIterator[KServeServer]:
    options = KServeOptions(versions=("1", "2"), grpc_port=0, stream_responses=2)
    async with await serve_kserve(options) as running:
        assert isinstance(running, KServeServer)
        yield running


@pytest.fixture
async def http(server: KServeServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


# -- models and tensors -------------------------------------------------------------------


def test_weights_are_deterministic_and_differ_by_version() -> None:
    assert weights_for("1", 4) == PRESET_WEIGHTS["1"]
    assert weights_for("2", 4) == PRESET_WEIGHTS["2"]
    assert weights_for("7", 4) == weights_for("7", 4) != weights_for("8", 4)
    assert len(weights_for("1", 6)) == 7  # presets fit 4 features; others are derived
    assert probability("1", ROW) != probability("2", ROW)


def test_repository_resolves_like_triton() -> None:
    model = SimModel("m", ("1", "3"), {"1": weights_for("1", 4), "3": weights_for("3", 4)})
    repo = ModelRepository([model])
    assert repo.resolve("m", "") == (model, "3")
    assert repo.resolve("m", "1") == (model, "1")
    with pytest.raises(TensorError) as unknown:
        repo.resolve("x", "")
    assert (unknown.value.status, str(unknown.value)) == (
        400,
        "Request for unknown model: 'x' is not found",
    )
    with pytest.raises(TensorError) as version:
        repo.resolve("m", "2")
    assert version.value.status == 404
    with pytest.raises(TensorError) as text:
        repo.resolve("m", "latest")
    assert text.value.status == 400 and "integral value" in str(text.value)


def test_tensor_checks() -> None:
    spec = TensorSpec("features", "FP32", (-1, 4))
    assert spec.matches([3, 4]) and spec.matches([0, 4])
    assert not spec.matches([3, 5]) and not spec.matches([12])
    assert flatten_json([[1, 2], [3, 4.5]], "FP32", 4, "x") == [1, 2, 3, 4.5]
    with pytest.raises(TensorError, match="has 3 elements but its shape implies 4"):
        flatten_json([1, 2, 3], "FP32", 4, "x")
    with pytest.raises(TensorError, match="expected numbers"):
        flatten_json([1, "2", 3, True], "FP32", 4, "x")
    with pytest.raises(TensorError, match="expected integers"):
        flatten_json([1.5], "INT32", 1, "x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": ("a",), "decoupled_models": ("a",)}, "distinct"),
        ({"models": ("a/b",)}, "'/'"),
        ({"versions": ("0",)}, "versions"),
        ({"versions": ("v1",)}, "versions"),
        ({"weights": (1.0, 2.0)}, "weights needs 4"),
        ({"features": 0}, "features"),
        ({"error_rate": 2.0}, "error_rate"),
    ],
)
def test_options_reject_nonsense(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KServeOptions(**kwargs)


def test_command_line_options() -> None:
    parser = argparse.ArgumentParser()
    add_backends(parser.add_subparsers(dest="simulator", required=True))
    args = parser.parse_args(
        ["kserve", "--model-version", "2", "--weights", "1,0,0,0,-1", "--grpc-port", "0"]
    )
    options = options_from_args(args)
    assert options.versions == ("2",) and options.grpc_port == 0
    assert options.models == ("fraud-detector",)
    assert options.repository().models["fraud-detector"].weights["2"] == (1.0, 0, 0, 0, -1.0)
    only = options_from_args(parser.parse_args(["kserve", "--model", "scorer"]))
    assert (only.models, only.decoupled_models) == (("scorer",), ())
    with pytest.raises(SystemExit):
        parser.parse_args(["kserve", "--weights", "1,x"])


# -- HTTP ---------------------------------------------------------------------------------


async def test_json_infer_nested_rows_and_id(http: httpx.AsyncClient) -> None:
    reply = await http.post(INFER, json=json_body(ROW, [0, 0, 0, 0], id="abc"))
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("fraud-detector", "2", "abc")
    [output] = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("probability", "FP32", [2, 1])
    assert output["data"] == [probability("2", ROW), probability("2", [0, 0, 0, 0])]
    plain = (
        await http.post("/v2/models/fraud-detector/versions/1/infer", json=json_body(ROW))
    ).json()
    assert "id" not in plain and plain["outputs"][0]["data"] == [probability("1", ROW)]


async def test_binary_infer_by_hand(http: httpx.AsyncClient) -> None:
    content, headers = binary_body([ROW, ROW, [1, 1, 1, 1]])
    reply = await http.post(INFER, content=content, headers=headers)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    head = json.loads(reply.content[:length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert "data" not in head["outputs"][0]
    values = struct.unpack("<3f", reply.content[length:])
    assert values[0] == values[1] == probability("2", ROW)


@pytest.mark.parametrize(
    ("make", "status", "text"),
    [
        (lambda: binary_body([ROW], declared=12), 400, "unexpected total byte size 12"),
        (lambda: binary_body([ROW], declared=32), 400, "unexpected end of binary data"),
        (lambda: binary_body([ROW], tail=b"\0\0\0\0"), 400, "unexpected additional input data"),
    ],
)
async def test_binary_size_errors(
    http: httpx.AsyncClient, make: Any, status: int, text: str
) -> None:
    content, headers = make()
    reply = await http.post(INFER, content=content, headers=headers)
    assert reply.status_code == status and text in reply.json()["error"]


@pytest.mark.parametrize(
    ("body", "headers", "text"),
    [
        (b"{not json", {}, "failed to parse the request JSON"),
        (b"[1, 2]", {}, "not a JSON object"),
        (b"{}", {}, "Unable to parse 'inputs'"),
        (b'{"inputs": []}', {}, "missing required input(s) ['features']"),
        (b'{"inputs": [7]}', {}, "input 0 is not an object"),
        (b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, -4]}]}', {}, "shape"),
        (b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4]}]}', {}, "neither"),
        (b"{}", {"inference-header-content-length": "99"}, "Inference-Header-Content-Length"),
        (b"{}", {"content-encoding": "br"}, "unsupported Content-Encoding"),
        (b"{}", {"content-encoding": "gzip"}, "failed to decompress"),
        (b"{}", {"x-sim-latency-ms": "soon"}, "x-sim-latency-ms"),
    ],
)
async def test_malformed_requests_get_400(
    http: httpx.AsyncClient, body: bytes, headers: dict[str, str], text: str
) -> None:
    reply = await http.post(INFER, content=body, headers=headers)
    assert reply.status_code == 400
    assert text in reply.json()["error"]


async def test_input_and_output_errors(http: httpx.AsyncClient) -> None:
    twice = json_body(ROW)
    twice["inputs"] *= 2
    reply = await http.post(INFER, json=twice)
    assert "already exists" in reply.json()["error"]
    reply = await http.post(INFER, json=json_body(ROW, outputs=[{"name": "score"}]))
    assert reply.status_code == 400
    assert "unexpected inference output 'score'" in reply.json()["error"]
    short = json_body(ROW)
    short["inputs"][0]["data"] = [1, 2, 3]
    reply = await http.post(INFER, json=short)
    assert reply.status_code == 400 and "implies 4" in reply.json()["error"]


async def test_routes_methods_and_health(server: KServeServer, http: httpx.AsyncClient) -> None:
    assert (await http.get("/v2/nothing")).status_code == 404
    assert (await http.get(INFER)).status_code == 405
    assert (await http.post("/v2/models/fraud-detector")).status_code == 405
    assert (await http.get("/v2/models/fraud-detector/versions/x")).status_code == 400
    assert (await http.get("/v2/models/fraud-detector/stats/extra")).status_code == 404
    assert (await http.get("/v2/models/fraud%2Ddetector/ready")).status_code == 200
    index = (await http.post("/v2/repository/index")).json()
    assert len(index) == 4  # two models, two versions each
    await http.post("/sim/faults", json={"health_status": 503})
    assert (await http.get("/v2/health/ready")).status_code == 503
    assert (await http.get("/v2/models/fraud-detector/ready")).status_code == 503
    assert (await http.get("/v2/health/live")).status_code == 200
    assert server.faults.health_status == 503


async def test_faults_and_counters(server: KServeServer, http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    reply = await http.post(INFER, json=json_body(ROW), headers={"x-sim-latency-ms": "150"})
    assert reply.status_code == 200 and time.monotonic() - started >= 0.14
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(INFER, json=json_body(ROW), headers={"x-sim-cut-after": "0"})
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(INFER, json=json_body(ROW), headers={"x-sim-garbage": "1"})
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await http.post(INFER, json=json_body(ROW), headers={"x-sim-reset": "1"})
    failed = await http.post(INFER, json=json_body(ROW), headers={"x-sim-status": "429"})
    assert failed.status_code == 429 and failed.json() == {"error": "simulated failure: 429"}
    await http.post("/sim/faults", json={"faults": ["status=502"]})
    assert (await http.post(INFER, json=json_body(ROW))).status_code == 502
    stats = (await http.get("/sim/stats")).json()
    assert stats["faults"] == {"latency": 1, "cut": 1, "garbage": 1, "reset": 1, "status": 2}
    assert stats["by_model"] == {"fraud-detector": {"2": 6}}
    assert stats["aborted"] == 3
    reset = (await http.post("/sim/reset")).json()
    assert reset["by_model"] == {} and reset["faults"] == {}


async def test_error_rate_option() -> None:
    server = await serve_kserve(KServeOptions(error_rate=1.0, seed=1))
    async with server, httpx.AsyncClient(base_url=server.url) as client:
        reply = await client.post(INFER, json=json_body(ROW))
    assert reply.status_code == 500 and "simulated failure" in reply.json()["error"]


# -- gRPC, below tritonclient -------------------------------------------------------------


def typed_request(rows: list[list[float]], **fields: Any) -> Any:
    request = pb.ModelInferRequest(model_name="fraud-detector", **fields)
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[len(rows), 4])
    tensor.contents.fp32_contents.extend(x for row in rows for x in row)
    return request


async def test_grpc_typed_contents_and_raw_mismatch(server: KServeServer) -> None:
    assert server.grpc_address is not None
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelInfer(typed_request([ROW], model_version="1"))
        reply = await call
        assert (await call.initial_metadata())["x-sim-name"] == server.name
        assert struct.unpack("<f", reply.raw_output_contents[0])[0] == probability("1", ROW)
        short = typed_request([ROW])
        del short.inputs[0].contents.fp32_contents[-1]
        with pytest.raises(grpc.aio.AioRpcError) as few:
            await stub.ModelInfer(short)
        assert few.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unexpected number of elements 3" in str(few.value.details())
        mixed = typed_request([ROW])
        mixed.raw_input_contents.extend([b"", b""])
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await stub.ModelInfer(mixed)
        assert "raw_input_contents" in str(raw.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.ModelStatistics(pb.ModelStatisticsRequest())
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


async def test_grpc_stream_fault_aborts_before_any_response(server: KServeServer) -> None:
    assert server.grpc_address is not None
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        stream = stub.ModelStreamInfer(metadata=(("x-sim-status", "503"),))
        await stream.write(typed_request([ROW]))
        await stream.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stream.read()
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as reset:
            await stub.ModelInfer(typed_request([ROW]), metadata=(("x-sim-reset", "1"),))
        assert reset.value.code() == grpc.StatusCode.UNAVAILABLE
        hung = stub.ModelInfer(typed_request([ROW]), metadata=(("x-sim-hang", "1"),))
        # Polled, not looked at once after a fixed pause a loaded machine can outlast.
        assert await until(lambda: server.stats.in_flight == 1)
        hung.cancel()
    assert await until(lambda: server.stats.in_flight == 0 and server.stats.cancelled >= 1)


def test_grpc_codes_for_http_statuses() -> None:
    assert grpc_code(503) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(404) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(500) == grpc.StatusCode.INTERNAL
    assert grpc_code(418) == grpc.StatusCode.FAILED_PRECONDITION
