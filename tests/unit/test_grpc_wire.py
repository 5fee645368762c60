"""The gRPC front's wire-level rewrites, checked against the real protobuf classes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb

from gateway.dataplane.grpc.wire import (
    WireError,
    readdress,
    readdress_nested,
    split_head,
    string_field,
    with_head,
)


def infer_request(name: str = "fraud", version: str = "", rows: int = 2) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, model_version=version, id="req-1")
    request.parameters["priority"].int64_param = 3
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[rows, 4])
    tensor.parameters["binary_data_size"].int64_param = rows * 16
    request.outputs.add(name="probability")
    request.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return request


def test_head_reads_name_and_version_and_readdresses_the_rest() -> None:
    request = infer_request("fraud", "3")
    head = split_head(request.SerializeToString())
    assert (head.name, head.version) == ("fraud", "3")
    moved = pb.ModelInferRequest.FromString(with_head("fraud-detector", "7", head))
    expected = pb.ModelInferRequest()
    expected.CopyFrom(request)
    expected.model_name, expected.model_version = "fraud-detector", "7"
    assert moved == expected


def test_an_empty_version_is_left_out_like_proto3_does() -> None:
    head = split_head(infer_request("fraud", "3").SerializeToString())
    moved = pb.ModelInferRequest.FromString(with_head("other", "", head))
    assert (moved.model_name, moved.model_version) == ("other", "")
    assert string_field(2, "") == b""


def test_every_occurrence_of_the_name_is_replaced_wherever_it_stands() -> None:
    # A client may append a second model_name after the tensors: parsers take the last
    # one, so leaving it would send the request to a model the route does not name.
    body = infer_request("fraud").SerializeToString()
    smuggled = body + string_field(1, "admin-model") + string_field(2, "9")
    head = split_head(smuggled)
    assert (head.name, head.version) == ("admin-model", "9")
    moved = pb.ModelInferRequest.FromString(with_head("fraud-detector", "", head))
    assert moved.model_name == "fraud-detector" and moved.model_version == ""
    assert moved.raw_input_contents == infer_request().raw_input_contents


@given(
    name=st.text(min_size=1, max_size=300),
    version=st.text(max_size=20),
    new=st.text(min_size=1, max_size=300),
    rows=st.integers(min_value=0, max_value=40),
)
def test_readdressing_matches_protobuf_for_any_names(
    name: str, version: str, new: str, rows: int
) -> None:
    request = infer_request(name, version, rows)
    head = split_head(request.SerializeToString())
    assert (head.name, head.version) == (name, version)
    moved = pb.ModelInferRequest.FromString(with_head(new, version, head))
    assert moved.model_name == new and moved.model_version == version
    assert moved.raw_input_contents == request.raw_input_contents
    assert moved.inputs == request.inputs and moved.parameters == request.parameters


def test_an_untouched_request_is_the_same_object() -> None:
    body = infer_request().SerializeToString()
    assert readdress(body, "fraud") is body  # ModelInferRequest's field 1 is the name too


def test_replies_are_renamed_to_the_route() -> None:
    reply = pb.ModelInferResponse(model_name="fraud-detector", model_version="2", id="x")
    reply.outputs.add(name="probability", datatype="FP32", shape=[1, 1])
    reply.raw_output_contents.append(b"\x00\x00\x80\x3f")
    renamed = pb.ModelInferResponse.FromString(readdress(reply.SerializeToString(), "fraud"))
    assert renamed.model_name == "fraud" and renamed.model_version == "2"
    assert renamed.raw_output_contents == reply.raw_output_contents

    metadata = pb.ModelMetadataResponse(name="fraud-detector", versions=["1", "2"])
    renamed_md = pb.ModelMetadataResponse.FromString(
        readdress(metadata.SerializeToString(), "fraud")
    )
    assert renamed_md.name == "fraud" and list(renamed_md.versions) == ["1", "2"]


def test_nested_names_in_stream_and_config_replies() -> None:
    inner = pb.ModelInferResponse(model_name="fraud-detector-stream", id="r1")
    inner.parameters["triton_final_response"].bool_param = True
    stream = pb.ModelStreamInferResponse(error_message="", infer_response=inner)
    renamed = pb.ModelStreamInferResponse.FromString(
        readdress_nested(stream.SerializeToString(), 2, "fraud-stream")
    )
    assert renamed.infer_response.model_name == "fraud-stream"
    assert renamed.infer_response.parameters["triton_final_response"].bool_param

    error_only = pb.ModelStreamInferResponse(error_message="boom").SerializeToString()
    assert readdress_nested(error_only, 2, "x") is error_only

    config = pb.ModelConfigResponse(
        config=config_pb.ModelConfig(name="fraud-detector", max_batch_size=8)
    )
    renamed_cfg = pb.ModelConfigResponse.FromString(
        readdress_nested(config.SerializeToString(), 1, "fraud")
    )
    assert renamed_cfg.config.name == "fraud" and renamed_cfg.config.max_batch_size == 8


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x0a\x05abc", "past the end"),  # name of 5 bytes, 3 present
        (b"\x0a", "ends inside"),  # a tag and nothing else
        (b"\x08\x01", "must be a string"),  # field 1 as a varint
        (b"\x0a\x02\xff\xfe", "UTF-8"),
        (b"\x1b\x00", "wire type 3"),  # group start
        (b"\x02\x00", "field number 0"),
        (b"\x19\x01\x02", "past the end"),  # fixed64 cut short
        (b"\x80" * 11, "longer than 10 bytes"),
        (b"\x0a\x80", "ends inside"),  # a length varint cut short
    ],
)
def test_malformed_messages_are_refused_with_the_reason(data: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        split_head(data)


def test_a_long_field_uses_a_multibyte_length() -> None:
    name = "m" * 300
    head = split_head(string_field(1, name) + b"\x18\x05")  # name, then field 3 = 5
    assert head.name == name
    assert split_head(with_head("x" * 200, "", head)).name == "x" * 200
