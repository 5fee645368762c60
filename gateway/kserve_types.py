"""The KServe v2 (Open Inference Protocol) datatypes: one table for every side.

The gateway's KServe fronts (HTTP validation, drift decoding of binary and gRPC
tensors, shadow comparison) and the KServe simulator all read these. Standard library
only, and outside `gateway.dataplane`: the simulators import it without pulling in the
data plane, numpy or grpc.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# Bytes per element of each v2 datatype, in the protocol's order (error messages list
# them so); BYTES elements carry their own 4-byte length, hence 0.
ITEM_SIZE: Final[Mapping[str, int]] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "BF16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": 0,
}
# `struct` codes of the fixed-size datatypes (binary tensors and gRPC raw contents are
# little-endian). BYTES is length-prefixed and BF16 has no `struct` code: not here.
STRUCT_CODES: Final[Mapping[str, str]] = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
# The gRPC `InferTensorContents` field that carries each datatype when it is not sent
# as raw bytes (FP16 and BF16 have none: they travel only raw).
CONTENTS_FIELDS: Final[Mapping[str, str]] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
