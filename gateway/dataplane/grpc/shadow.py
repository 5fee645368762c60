"""gRPC ModelInfer calls as KServe v2 HTTP requests, for their shadow copies.

Shadows are addressed by http:// endpoints (a shadow has no `grpc_port`: Triton and
KServe servers answer both transports, and HTTP is the one every shadow already has),
so the copy of a gRPC ModelInfer goes out as the equivalent KServe v2 HTTP inference
request, on the mirror's pool like any other copy. Both sides then meet as v2 answers:
the primary's ModelInferResponse is read as the v2 body it stands for, and
`shadowcompare` compares them output by output exactly as for HTTP primaries.

Tensors stay bytes: the request's raw_input_contents become the binary tensor
extension's payload (the same little-endian layout, BYTES length-prefixed alike), and
the response's raw_output_contents are read the same way. Only the small rest of each
message goes through the protobuf classes. Work done here is for sampled calls only:
the request's at sampling time, the response's when the pair is compared.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from gateway.dataplane.grpc.wire import WireError, take_field
from gateway.kserve_types import CONTENTS_FIELDS, STRUCT_CODES

GRPC_INFER_PATH = b"/inference.GRPCInferenceService/ModelInfer"
_RAW_INPUTS = 7  # ModelInferRequest.raw_input_contents
_RAW_OUTPUTS = 6  # ModelInferResponse.raw_output_contents


class NotTranslatable(ValueError):
    """A ModelInfer message that has no KServe v2 HTTP equivalent the gateway can build."""


def infer_request_as_http(data: bytes) -> tuple[bytes, bytes]:
    """The KServe v2 HTTP body of a ModelInferRequest and its extra header lines.

    Every input travels as binary tensor data (typed `contents` are packed); outputs
    are asked for as binary data too, the form a gRPC reply has. Raises
    `NotTranslatable` for bytes that are not a ModelInferRequest or an input without
    data.
    """
    # Imported here, as in grpctensors: only processes that shadow gRPC calls need them.
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
    from tritonclient.grpc import service_pb2

    try:
        rest, raws = take_field(data, _RAW_INPUTS)
        request = service_pb2.ModelInferRequest.FromString(rest)
    except (WireError, DecodeError) as exc:
        raise NotTranslatable(f"not a ModelInferRequest: {exc}") from None
    inputs: list[dict[str, Any]] = []
    payload: list[bytes | memoryview] = []
    for i, tensor in enumerate(request.inputs):
        datatype = str(tensor.datatype)
        raw = raws[i] if i < len(raws) else _pack(datatype, tensor.contents, str(tensor.name))
        params = _params(tensor.parameters)
        params["binary_data_size"] = len(raw)
        inputs.append(
            {
                "name": str(tensor.name),
                "datatype": datatype,
                "shape": [int(d) for d in tensor.shape],
                "parameters": params,
            }
        )
        payload.append(raw)
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id:
        doc["id"] = str(request.id)
    params = _params(request.parameters)
    params["binary_data_output"] = True
    doc["parameters"] = params
    if request.outputs:
        doc["outputs"] = [
            {"name": str(o.name), "parameters": {**_params(o.parameters), "binary_data": True}}
            for o in request.outputs
        ]
    head = orjson.dumps(doc)
    lines = (
        b"content-type: application/octet-stream\r\n"
        b"inference-header-content-length: %d\r\n" % len(head)
    )
    return b"".join((head, *payload)), lines


def infer_reply_as_v2(data: bytes) -> bytes:
    """A ModelInferResponse as the KServe v2 HTTP answer it stands for (binary tensor
    extension for raw outputs), for `shadowcompare`. Raises `NotTranslatable`."""
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import service_pb2

    try:
        rest, raws = take_field(data, _RAW_OUTPUTS)
        reply = service_pb2.ModelInferResponse.FromString(rest)
    except (WireError, DecodeError) as exc:
        raise NotTranslatable(f"not a ModelInferResponse: {exc}") from None
    outputs: list[dict[str, Any]] = []
    tail: list[bytes | memoryview] = []
    for i, tensor in enumerate(reply.outputs):
        datatype = str(tensor.datatype)
        item: dict[str, Any] = {
            "name": str(tensor.name),
            "datatype": datatype,
            "shape": [int(d) for d in tensor.shape],
        }
        if i < len(raws):
            item["parameters"] = {"binary_data_size": len(raws[i])}
            tail.append(raws[i])
        else:
            item["data"] = _values(datatype, tensor.contents)
        outputs.append(item)
    doc = {"model_name": str(reply.model_name), "outputs": outputs}
    return b"".join((orjson.dumps(doc), *tail))


def _params(parameters: Any) -> dict[str, Any]:
    """A protobuf map of InferParameter as the JSON `parameters` object."""
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[str(key)] = getattr(value, which)
    return out


def _values(datatype: str, contents: Any) -> list[Any]:
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        return []
    values = list(getattr(contents, field))
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") for v in values]
    return values


def _pack(datatype: str, contents: Any, name: str) -> bytes:
    """Typed `contents` as binary tensor data (little-endian; BYTES length-prefixed)."""
    field = CONTENTS_FIELDS.get(datatype)
    values = list(getattr(contents, field)) if field is not None else []
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    code = STRUCT_CODES.get(datatype)
    if code is None or field is None:
        raise NotTranslatable(f"input '{name}' ({datatype}) has no raw contents")
    try:
        return struct.pack(f"<{len(values)}{code}", *values)
    except struct.error as exc:
        raise NotTranslatable(f"input '{name}': {exc}") from None
