"""gRPC front pieces without a network: status mapping, grpc_port compile, drift decoding."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import PolicyError, parse_policies
from gateway.dataplane.grpc.call import HTTP_STATUS, failure_kind, grpc_code
from gateway.dataplane.grpc.tensors import GrpcInferBody, kserve_json
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.kserve import MAX_DECODED_ROWS
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.drift.features import MAX_ROWS_PER_REQUEST, tensor_extractor
from gateway.errors import (
    BadRequest,
    NoHealthyUpstream,
    PayloadTooLarge,
    UnknownRoute,
    UpstreamConnectError,
    UpstreamTimeout,
)
from gateway.observability.metrics import GatewayMetrics

KSERVE = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: kserve-v2
variants:
  - {name: champion, endpoints: ["http://10.0.0.1:8000", "http://[fd00::2]:8000"], grpc_port: 8001}
  - {name: challenger, endpoints: ["http://10.0.0.3:8000"]}
"""


def compile_text(text: str) -> RuntimeSnapshot:
    policies, problems = parse_policies(text, "p.yaml")
    assert not problems, problems
    metrics = GatewayMetrics()
    return compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))


def test_grpc_port_gives_each_endpoint_a_grpc_target_on_its_own_host() -> None:
    snap = compile_text(KSERVE)
    route = snap.routes["fraud"]
    champion, challenger = route.variants
    assert [e.grpc_target for e in champion.endpoints] == ["10.0.0.1:8001", "[fd00::2]:8001"]
    # Health and metrics stay those of the server: the HTTP authority names it.
    assert champion.endpoints[0].backend == "10.0.0.1:8000"
    assert [e.grpc_target for e in challenger.endpoints] == [""]


def test_grpc_port_is_refused_outside_kserve_routes() -> None:
    text = KSERVE.replace("protocol: kserve-v2", "protocol: openai")
    with pytest.raises(PolicyError, match="grpc_port applies to kserve-v2 routes only"):
        compile_text(text)


def test_grpc_port_must_be_a_port() -> None:
    _, problems = parse_policies(KSERVE.replace("grpc_port: 8001", "grpc_port: 70000"), "p.yaml")
    assert any("grpc_port" in str(p) for p in problems)


def test_gateway_errors_map_to_the_grpc_status_clients_expect() -> None:
    assert grpc_code(UnknownRoute("x")) == grpc.StatusCode.NOT_FOUND
    assert grpc_code(BadRequest("bad")) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(PayloadTooLarge("big")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code(NoHealthyUpstream("none")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(UpstreamConnectError("down")) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code(UpstreamTimeout("slow")) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_every_grpc_status_has_an_http_class() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503  # `retries.on: [503]` covers it


@pytest.mark.parametrize(
    ("code", "details", "ours", "kind"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: Connection refused",
            True,
            "connect-error",
        ),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", True, "reset"),
        (grpc.StatusCode.UNAVAILABLE, "model is loading", True, "503"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", True, "timeout"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", False, "504"),
        (grpc.StatusCode.INTERNAL, "boom", True, "500"),
        (grpc.StatusCode.INVALID_ARGUMENT, "shape", True, "400"),
    ],
)
def test_failures_are_named_as_the_retry_policy_names_them(
    code: grpc.StatusCode, details: str, ours: bool, kind: str
) -> None:
    assert failure_kind(code, details, ours) == kind


def _request(*tensors: triton.InferInput) -> bytes:
    request = pb.ModelInferRequest(model_name="fraud")
    for t in tensors:
        request.inputs.append(t._get_tensor())
        raw = t._get_content()
        if raw is not None:
            request.raw_input_contents.append(raw)
    data: bytes = request.SerializeToString()
    return data


def test_raw_tensors_decode_to_the_kserve_json_the_drift_extractors_read() -> None:
    features = triton.InferInput("features", [2, 3], "FP32")
    features.set_data_from_numpy(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
    ids = triton.InferInput("ids", [2], "INT64")
    ids.set_data_from_numpy(np.array([7, 8], dtype=np.int64))
    notes = triton.InferInput("notes", [2], "BYTES")
    notes.set_data_from_numpy(np.array([b"ok", "sp\u00e9cial".encode()], dtype=np.object_))
    body = kserve_json(_request(features, ids, notes))
    assert body["inputs"][0] == {
        "name": "features",
        "datatype": "FP32",
        "shape": [2, 3],
        "data": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    }
    assert body["inputs"][1]["data"] == [7, 8]
    assert body["inputs"][2]["data"] == ["ok", "sp\u00e9cial"]
    rows = tensor_extractor([])(body)
    assert rows[1]["features[2]"] == 6.0


def test_typed_contents_decode_too_and_big_batches_are_cut_to_the_window_bound() -> None:
    request = pb.ModelInferRequest(model_name="fraud")
    assert MAX_DECODED_ROWS == MAX_ROWS_PER_REQUEST  # decode what the windows keep
    n = MAX_ROWS_PER_REQUEST + 10
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[n, 2])
    tensor.contents.int_contents.extend(range(2 * n))
    body = kserve_json(request.SerializeToString())
    (decoded,) = body["inputs"]
    assert decoded["shape"] == [MAX_ROWS_PER_REQUEST, 2]
    assert decoded["data"][:4] == [0, 1, 2, 3] and len(decoded["data"]) == 2 * MAX_ROWS_PER_REQUEST


def test_bytes_that_are_not_a_request_raise_value_error() -> None:
    with pytest.raises(ValueError, match="not a ModelInferRequest"):
        kserve_json(b"\xff\xff\xff")


def test_the_tap_body_decodes_when_drift_extraction_reads_it() -> None:
    features = triton.InferInput("features", [1, 2], "FP32")
    features.set_data_from_numpy(np.array([[0.5, 1.5]], dtype=np.float32))
    body = GrpcInferBody(_request(features))
    assert dict(body) == {}  # nothing decoded on the request path
    assert tensor_extractor([])(body) == [{"features[0]": 0.5, "features[1]": 1.5}]
    assert GrpcInferBody(b"\xff\xff").get("inputs") is None
