"""A ModelInferRequest as the KServe v2 JSON body the drift extractors read.

The gRPC front offers every ModelInfer to the drift tap as a `GrpcInferBody`, which
holds the request's bytes and decodes them only when drift extraction reads `inputs`:
off the request path, and for sampled requests only (the tap drops the others at
once). At most `MAX_DECODED_ROWS` rows of each input are decoded, the bound the
drift windows apply anyway, so a large batch costs no more than a small one.
"""

from __future__ import annotations

import contextlib
import struct
from math import prod
from typing import Any

from gateway.dataplane.kserve import MAX_DECODED_ROWS
from gateway.kserve_types import CONTENTS_FIELDS, STRUCT_CODES


class GrpcInferBody(dict[str, Any]):
    """A ModelInferRequest standing in for its KServe v2 JSON body, decoded on demand.

    Drift extractors read bodies through `get`, so that is where decoding happens; a
    request that is not a ModelInferRequest reads as a body without inputs.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data: bytes | None = data

    def get(self, key: str, default: Any = None) -> Any:
        data = self._data
        if data is not None:
            self._data = None  # decoded once; the bytes are released
            # A request that is not a ModelInferRequest: the backend refuses it, and
            # drift has nothing to learn from it.
            with contextlib.suppress(ValueError):
                self.update(kserve_json(data))
        return super().get(key, default)


def infer_inputs(data: bytes) -> dict[str, Any]:
    """`{"inputs": [{"name", "datatype", "shape"}]}` of a ModelInferRequest, without
    the values: what a signature check reads (`dataplane.signature`). Raises
    `ValueError` when the bytes are not a ModelInferRequest."""
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
    from tritonclient.grpc import service_pb2

    try:
        request = service_pb2.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a ModelInferRequest: {exc}") from None
    return {
        "inputs": [
            {"name": str(t.name), "datatype": str(t.datatype), "shape": [int(d) for d in t.shape]}
            for t in request.inputs
        ]
    }


def kserve_json(data: bytes) -> dict[str, Any]:
    """`{"inputs": [{"name", "datatype", "shape", "data"}]}` of a ModelInferRequest.

    Raises `ValueError` when the bytes are not a ModelInferRequest. Inputs of a
    datatype without a plain value (BF16) are left out.
    """
    # Imported here: only processes serving a drift route on gRPC need the protobuf
    # classes (and tritonclient's import of numpy).
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import service_pb2

    try:
        request = service_pb2.ModelInferRequest.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a ModelInferRequest: {exc}") from None
    raw = request.raw_input_contents
    inputs: list[dict[str, Any]] = []
    for i, tensor in enumerate(request.inputs):
        datatype = str(tensor.datatype)
        shape = [int(d) for d in tensor.shape]
        if len(shape) > 1:
            rows = max(0, min(shape[0], MAX_DECODED_ROWS))
            count = rows * prod(shape[1:])
            shape = [rows, *shape[1:]]
        else:
            count = prod(shape)
        if i < len(raw):
            values = _from_raw(datatype, raw[i], count)
        elif datatype in CONTENTS_FIELDS:
            values = list(getattr(tensor.contents, CONTENTS_FIELDS[datatype])[:count])
            if datatype == "BYTES":
                values = [v.decode("utf-8", "replace") for v in values]
        else:
            values = None
        if values is None:
            continue
        inputs.append(
            {"name": str(tensor.name), "datatype": datatype, "shape": shape, "data": values}
        )
    return {"inputs": inputs}


def _from_raw(datatype: str, raw: bytes, count: int) -> list[Any] | None:
    if datatype == "BYTES":
        out: list[Any] = []
        pos = 0
        while pos + 4 <= len(raw) and len(out) < count:
            (length,) = struct.unpack_from("<I", raw, pos)
            out.append(raw[pos + 4 : pos + 4 + length].decode("utf-8", "replace"))
            pos += 4 + length
        return out
    code = STRUCT_CODES.get(datatype)
    if code is None:
        return None
    count = min(count, len(raw) // struct.calcsize(code))
    return list(struct.unpack_from(f"<{count}{code}", raw))
