"""The KServe v2 HTTP front on the real data plane, with in-memory transports at the edges.

What the backend receives (path, headers, body bytes) and what the client gets back are
checked byte for byte; the validation rules are checked directly and through the front.
"""

from __future__ import annotations

import gzip
import random
import struct

import orjson
import pytest

from gateway.dataplane.kserve import (
    MAX_DECODED_ROWS,
    check_infer_request,
    decode_binary_inputs,
    element_count,
    split_model_path,
)
from gateway.drift.features import tensor_rows
from gateway.drift.tap import DriftTap
from gateway.errors import BadRequest, NotFound
from tests.frontrig import FrontRig, json_reply, split_request

POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: kserve-v2
variants:
  - {name: champion, weight: 90, endpoints: ["http://127.0.0.1:9001"],
     model: fraud-backend, model_version: "3"}
  - {name: challenger, weight: 10, endpoints: ["http://127.0.0.1:9002"]}
sticky: {hash_on: "header:x-user-id"}
overrides:
  - {match: {header: {x-cohort: beta}}, variant: challenger}
fallback: [champion]
max_body_bytes: 4096
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: main, endpoints: ["http://127.0.0.1:9003"]}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: by-body
protocol: kserve-v2
variants:
  - {name: a, weight: 50, endpoints: ["http://127.0.0.1:9004"]}
  - {name: b, weight: 50, endpoints: ["http://127.0.0.1:9005"]}
sticky: {hash_on: "body:id"}
"""
CHAMPION, CHALLENGER = "127.0.0.1:9001", "127.0.0.1:9002"
INFER = {
    "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
}


def binary_request(values: list[float]) -> tuple[bytes, int]:
    """A tritonclient-style binary request: JSON header, then the raw FP32 bytes."""
    raw = struct.pack(f"<{len(values)}f", *values)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, len(values)],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + raw, len(header)


async def test_binary_infer_reaches_the_variants_model_and_version_untouched() -> None:
    rig = FrontRig(POLICY)
    body, header_len = binary_request([0.5, 1.5, -2.0, 3.25])
    rig.send(
        b"POST",
        b"/v2/models/fraud/infer",
        body,
        {"inference-header-content-length": str(header_len), "x-user-id": "u1"},
    )
    line, headers, sent = split_request(rig.sent(CHAMPION))
    # The variant's `model` and `model_version` go in the path; the body is not rewritten.
    assert line == b"POST /v2/models/fraud-backend/versions/3/infer HTTP/1.1"
    assert headers[b"inference-header-content-length"] == str(header_len).encode()
    assert sent == body
    out_header = b'{"model_name":"fraud-backend","model_version":"3","outputs":[]}'
    out_raw = struct.pack("<f", 0.25) + b"\x00\xff"
    rig.reply(
        CHAMPION,
        json_reply(
            out_header + out_raw,
            extra=b"inference-header-content-length: %d\r\n" % len(out_header),
        ),
    )
    response = rig.response()
    assert response.status == 200
    assert response.headers["inference-header-content-length"] == str(len(out_header))
    assert response.body == out_header + out_raw  # binary outputs relayed byte for byte
    assert response.headers["x-switchyard-variant"] == "champion"
    series = rig.metrics.series("fraud", "champion", "", CHAMPION)
    assert series.by_class[2] == 1


async def test_client_version_passes_through_when_the_variant_pins_none() -> None:
    rig = FrontRig(POLICY)
    body = orjson.dumps(INFER)
    rig.send(b"POST", b"/v2/models/fraud/versions/7/infer?trace=1", body, {"x-cohort": "beta"})
    line, _, sent = split_request(rig.sent(CHALLENGER))
    assert line == b"POST /v2/models/fraud/versions/7/infer?trace=1 HTTP/1.1"
    assert sent == body
    # A pinned version wins over the client's.
    rig.reply(CHALLENGER, json_reply(b"{}"))
    rig.send(b"POST", b"/v2/models/fraud/versions/7/infer", body, {"x-user-id": "u1"})
    line, _, _ = split_request(rig.sent(CHAMPION))
    assert line == b"POST /v2/models/fraud-backend/versions/3/infer HTTP/1.1"


async def test_metadata_and_config_name_the_route_and_ready_is_proxied() -> None:
    rig = FrontRig(POLICY)
    rig.send(b"GET", b"/v2/models/fraud", headers={"x-user-id": "u1"})
    line, _, _ = split_request(rig.sent(CHAMPION))
    assert line == b"GET /v2/models/fraud-backend/versions/3 HTTP/1.1"
    meta = {"name": "fraud-backend", "versions": ["3"], "platform": "onnx", "inputs": []}
    rig.reply(CHAMPION, json_reply(orjson.dumps(meta)))
    got = orjson.loads(rig.response().body)
    assert got == {**meta, "name": "fraud"}

    rig.send(b"GET", b"/v2/models/fraud/config", headers={"x-cohort": "beta"})
    line, _, _ = split_request(rig.sent(CHALLENGER))
    assert line == b"GET /v2/models/fraud/config HTTP/1.1"
    rig.reply(CHALLENGER, json_reply(b'{"name":"fraud","max_batch_size":8}'))
    assert orjson.loads(rig.response().body) == {"name": "fraud", "max_batch_size": 8}

    # A backend's error passes through unchanged, status included.
    rig.send(b"GET", b"/v2/models/fraud", headers={"x-user-id": "u1"})
    rig.sent(CHAMPION)
    rig.reply(CHAMPION, json_reply(b'{"error":"Request for unknown model"}', status=400))
    response = rig.response()
    assert response.status == 400 and response.body == b'{"error":"Request for unknown model"}'

    rig.send(b"GET", b"/v2/models/fraud/ready", headers={"x-user-id": "u1"})
    line, _, _ = split_request(rig.sent(CHAMPION))
    assert line == b"GET /v2/models/fraud-backend/versions/3/ready HTTP/1.1"
    rig.reply(CHAMPION, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert rig.response().status == 200


async def test_server_metadata_live_and_ready_are_answered_by_the_gateway() -> None:
    rig = FrontRig(POLICY)
    rig.send(b"GET", b"/v2")
    response = rig.response()
    assert response.status == 200
    assert orjson.loads(response.body)["name"] == "switchyard"
    rig.send(b"GET", b"/v2/health/live")
    assert rig.response().status == 200
    rig.send(b"GET", b"/v2/health/ready")
    assert rig.response().status == 200
    assert not rig.sent_anywhere()
    rig.plane.draining = True
    rig.send(b"GET", b"/v2/health/ready")
    response = rig.response()
    assert response.status == 400 and "shutting down" in orjson.loads(response.body)["error"]


def _header_len(n: int) -> dict[str, str]:
    return {"inference-header-content-length": str(n)}


def _binary(tensor: bytes, raw_bytes: int) -> tuple[bytes, dict[str, str]]:
    header = b'{"inputs":[' + tensor + b"]}"
    return header + b"\x00" * raw_bytes, _header_len(len(header))


BAD_REQUESTS = [
    (b"{not json", {}, 400, "not valid JSON"),
    (b"[1,2]", {}, 400, "must be a JSON object"),
    (b"{}", {}, 400, "'inputs' is required"),
    (b'{"inputs":{}}', {}, 400, "'inputs' is required"),
    (b'{"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}', {}, 400, "inputs[0].name"),
    (
        b'{"inputs":[{"name":"x","shape":[1,-4],"datatype":"FP32","data":[1]}]}',
        {},
        400,
        "non-negative integers",
    ),
    (
        b'{"inputs":[{"name":"x","shape":[true],"datatype":"FP32","data":[1]}]}',
        {},
        400,
        "non-negative integers",
    ),
    (
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FLOAT","data":[1,2,3,4]}]}',
        {},
        400,
        "'FLOAT' is not a v2 datatype",
    ),
    (
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3]}]}',
        {},
        400,
        "inputs[0] ('x'): shape [1, 4] holds 4 elements, but 'data' has 3",
    ),
    (
        b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32"}]}',
        {},
        400,
        "has no 'data'",
    ),
    (
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{}]}',
        {},
        400,
        "outputs[0]",
    ),
    (
        *_binary(
            b'{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":4}}', 4
        ),
        400,
        "binary_data_size is 4 bytes, but shape [2] of FP32 needs 8",
    ),
    (
        *_binary(
            b'{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}', 6
        ),
        400,
        "add up to 4 bytes, but 6 bytes follow",
    ),
    (b'{"inputs":[]}', {"inference-header-content-length": "ten"}, 400, "byte length"),
    (b'{"inputs":[]}', _header_len(500), 400, "does not fit the body"),
    (b'{"inputs":[1,2]}xxxx', _header_len(12), 400, "JSON header"),
    (b"{" + b" " * 5000 + b"}", {}, 413, "exceeds route 'fraud' limit of 4096"),
]


@pytest.mark.parametrize(("body", "headers", "status", "message"), BAD_REQUESTS)
async def test_bad_inference_requests_get_a_kserve_error_and_reach_no_backend(
    body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    rig = FrontRig(POLICY)
    rig.send(b"POST", b"/v2/models/fraud/infer", body, headers)
    response = rig.response()
    assert response.status == status
    error = orjson.loads(response.body)
    assert set(error) == {"error"} and message in error["error"], error
    assert not rig.sent_anywhere()
    assert rig.metrics.bad_request == 1


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        (b"POST", b"/v2/models/nope/infer", 404, "model 'nope' is not served"),
        (b"GET", b"/v2/models/nope", 404, "model 'nope' is not served"),
        (b"POST", b"/v2/models/chat/infer", 400, "route 'chat' speaks openai"),
        (b"GET", b"/v2/models/fraud/infer", 405, "POST"),
        (b"POST", b"/v2/models/fraud", 405, "GET"),
        (b"POST", b"/v2/health/live", 405, "GET"),
        (b"GET", b"/v2/repository/index", 404, "no KServe v2 endpoint"),
        (b"GET", b"/v2/models/fraud/versions//ready", 404, "no KServe v2 endpoint"),
    ],
)
async def test_unknown_models_paths_and_methods(
    method: bytes, path: bytes, status: int, message: str
) -> None:
    rig = FrontRig(POLICY)
    rig.send(method, path, orjson.dumps(INFER) if method == b"POST" else b"")
    response = rig.response()
    assert response.status == status
    assert message in orjson.loads(response.body)["error"]
    assert not rig.sent_anywhere()
    # An unknown name is never a metric label.
    assert "nope" not in {c.route for c in rig.metrics._routes.values()}


async def test_compressed_body_passes_through_unread() -> None:
    rig = FrontRig(POLICY)
    body = gzip.compress(orjson.dumps(INFER))
    rig.send(
        b"POST",
        b"/v2/models/fraud/infer",
        body,
        {"content-encoding": "gzip", "x-user-id": "u1"},
    )
    _, headers, sent = split_request(rig.sent(CHAMPION))
    assert sent == body and headers[b"content-encoding"] == b"gzip"


async def test_sticky_on_a_top_level_body_field() -> None:
    rig = FrontRig(POLICY)
    seen: dict[str, set[str]] = {}
    for i in range(24):
        request_id = f"txn-{i % 6}"
        rig.send(b"POST", b"/v2/models/by-body/infer", orjson.dumps({**INFER, "id": request_id}))
        for backend in ("127.0.0.1:9004", "127.0.0.1:9005"):
            if rig.sent(backend):
                seen.setdefault(request_id, set()).add(backend)
                rig.reply(backend, json_reply(b"{}"))
    assert len(seen) == 6 and all(len(b) == 1 for b in seen.values())
    assert len(set().union(*seen.values())) == 2  # both variants serve someone


async def test_inference_bodies_are_offered_to_the_drift_tap() -> None:
    tap = DriftTap(8, rng=random.Random(0))
    tap.configure({"fraud": 1.0})
    rig = FrontRig(POLICY, tap=tap)
    body, header_len = binary_request([1.0, 2.0])
    rig.send(b"POST", b"/v2/models/fraud/infer", body, _header_len(header_len))
    rig.send(b"GET", b"/v2/models/fraud")  # metadata is not a sample
    taken = tap.take()
    assert len(taken) == 1
    decision, parsed = taken[0]
    assert decision.route.name == "fraud"
    # Drift extraction reads binary tensors as values (decoded when it asks, not before).
    assert tensor_rows(parsed) == {"features": [[1.0, 2.0]]}


def test_binary_inputs_decode_for_drift_up_to_a_row_limit() -> None:
    rows = MAX_DECODED_ROWS + 10
    raw = struct.pack(f"<{rows * 2}f", *range(rows * 2)) + struct.pack("<3q", 7, -8, 9)
    inputs = [
        {
            "name": "x",
            "shape": [rows, 2],
            "datatype": "FP32",
            "parameters": {"binary_data_size": rows * 8},
        },
        {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 0}},
        {"name": "ids", "shape": [3], "datatype": "INT64", "parameters": {"binary_data_size": 24}},
    ]
    decoded = decode_binary_inputs(inputs, memoryview(raw))
    assert decoded[0]["shape"] == [MAX_DECODED_ROWS, 2]
    assert decoded[0]["data"][:4] == [0.0, 1.0, 2.0, 3.0]
    assert len(decoded[0]["data"]) == MAX_DECODED_ROWS * 2
    assert "data" not in decoded[1]  # BYTES are not decoded
    assert decoded[2]["data"] == [7, -8, 9]


def test_element_count_and_structural_checks() -> None:
    assert element_count([[1, 2, 3], [4, 5, 6]]) == 6
    assert element_count([]) == 0
    assert element_count(7) == 1
    assert element_count([[[1], [2]], [[3], [4]]]) == 4
    check_infer_request(
        {"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    )
    check_infer_request(
        {"inputs": [{"name": "z", "shape": [0, 4], "datatype": "FP32", "data": []}]}
    )
    # Shared-memory inputs carry no data here; BYTES sizes are the backend's to check.
    check_infer_request(
        {
            "inputs": [
                {
                    "name": "m",
                    "shape": [8],
                    "datatype": "FP32",
                    "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 32},
                },
                {
                    "name": "t",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 9},
                },
            ]
        },
        9,
    )
    with pytest.raises(BadRequest, match="parameters must be an object"):
        check_infer_request(
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": 3}]}
        )


def test_model_paths_split_from_the_right() -> None:
    assert split_model_path(b"fraud/infer") == ("fraud", b"", b"/infer")
    assert split_model_path(b"fraud/versions/2/ready") == ("fraud", b"2", b"/ready")
    assert split_model_path(b"fraud/versions/2") == ("fraud", b"2", b"")
    assert split_model_path(b"team%2Ffraud/config") == ("team/fraud", b"", b"/config")
    assert split_model_path(b"org/fraud/infer") == ("org/fraud", b"", b"/infer")
    with pytest.raises(NotFound):
        split_model_path(b"fraud/versions/")
