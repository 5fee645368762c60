"""ModelInfer messages as the KServe v2 HTTP bodies their shadow copies carry, and
ModelInferResponse as the v2 answers they are compared as."""

from __future__ import annotations

import struct

import orjson
import pytest
from tritonclient.grpc import service_pb2

from gateway.dataplane.grpc.shadow import (
    NotTranslatable,
    infer_reply_as_v2,
    infer_request_as_http,
)
from gateway.dataplane.grpc.wire import take_field
from gateway.dataplane.shadow.compare import Tolerance, compare


def split(body: bytes, lines: bytes) -> tuple[dict[str, object], bytes]:
    size = int(lines.split(b"inference-header-content-length: ")[1].split(b"\r\n")[0])
    return orjson.loads(body[:size]), body[size:]


def test_raw_inputs_become_binary_tensor_data_untouched() -> None:
    request = service_pb2.ModelInferRequest(model_name="fraud", id="r-1")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 2])
    tensor.parameters["note"].string_param = "x"
    request.outputs.add(name="probability")
    request.raw_input_contents.append(struct.pack("<2f", 0.5, -1.0))
    body, lines = infer_request_as_http(request.SerializeToString())
    doc, tail = split(body, lines)
    assert doc == {
        "id": "r-1",
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": [1, 2],
                "parameters": {"note": "x", "binary_data_size": 8},
            }
        ],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "probability", "parameters": {"binary_data": True}}],
    }
    assert tail == struct.pack("<2f", 0.5, -1.0)
    assert lines.startswith(b"content-type: application/octet-stream\r\n")


def test_typed_contents_are_packed_as_the_binary_extension_lays_them_out() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    ints = request.inputs.add(name="ids", datatype="INT64", shape=[2])
    ints.contents.int64_contents.extend([7, -1])
    text = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"hi")
    body, lines = infer_request_as_http(request.SerializeToString())
    doc, tail = split(body, lines)
    sizes = [i["parameters"]["binary_data_size"] for i in doc["inputs"]]  # type: ignore[attr-defined, index]
    assert sizes == [16, 6]
    assert tail == struct.pack("<2q", 7, -1) + struct.pack("<I", 2) + b"hi"


def test_what_has_no_http_form_is_refused() -> None:
    with pytest.raises(NotTranslatable):
        infer_request_as_http(b"\x0a\x05fraud\x3a\xff")  # a field running past the end
    half = service_pb2.ModelInferRequest(model_name="m")
    half.inputs.add(name="x", datatype="FP16", shape=[1])  # FP16 travels only raw
    with pytest.raises(NotTranslatable, match="'x' \\(FP16\\) has no raw contents"):
        infer_request_as_http(half.SerializeToString())


def test_a_grpc_reply_compares_as_the_v2_answer_it_stands_for() -> None:
    reply = service_pb2.ModelInferResponse(model_name="fraud", model_version="1")
    reply.outputs.add(name="probability", datatype="FP32", shape=[2, 1])
    reply.raw_output_contents.append(struct.pack("<2f", 0.25, 0.75))
    as_v2 = infer_reply_as_v2(reply.SerializeToString())
    http_json = orjson.dumps(
        {
            "outputs": [
                {"name": "probability", "datatype": "FP32", "shape": [2, 1], "data": [0.25, 0.75]}
            ]
        }
    )
    same = compare("kserve-v2", b"", 200, as_v2, 200, http_json, Tolerance())
    assert (same.result, same.outputs) == ("agree", (("probability", True),))
    other = http_json.replace(b"0.75", b"0.5")
    assert compare("kserve-v2", b"", 200, as_v2, 200, other, Tolerance()).result == "disagree"
    typed = service_pb2.ModelInferResponse(model_name="fraud")
    typed.outputs.add(name="label", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"fraud"
    )
    assert orjson.loads(infer_reply_as_v2(typed.SerializeToString()))["outputs"][0]["data"] == [
        "fraud"
    ]


def test_take_field_keeps_the_rest_byte_for_byte() -> None:
    request = service_pb2.ModelInferRequest(model_name="m", id="i")
    request.inputs.add(name="a", datatype="UINT8", shape=[3])
    request.raw_input_contents.extend([b"\x01\x02\x03", b""])
    rest, raws = take_field(request.SerializeToString(), 7)
    assert [bytes(r) for r in raws] == [b"\x01\x02\x03", b""]
    parsed = service_pb2.ModelInferRequest.FromString(rest)
    assert (parsed.model_name, parsed.id, len(parsed.raw_input_contents)) == ("m", "i", 0)
    plain = service_pb2.ModelInferRequest(model_name="m").SerializeToString()
    assert take_field(plain, 7) == (plain, [])
