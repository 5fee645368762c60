"""Tensors of the Open Inference Protocol (KServe v2) as Triton validates them.

Shared by the HTTP (JSON and binary tensor extension) and gRPC sides of the KServe
simulator: datatype sizes, shape checks, decoding numbers from JSON `data`, from
binary bytes and from gRPC `contents`, and encoding outputs. Pure Python with
`struct`: the simulator's tensors are a few rows of a few features, where numpy's
per-call overhead would cost more than it saves.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Final

from gateway.kserve_types import STRUCT_CODES

_INTEGER_TYPES: Final = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
)


class TensorError(ValueError):
    """A request tensor Triton would reject; `status` is the HTTP status it answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output: name, datatype and shape (-1 is any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, object]:
        """The `$metadata_tensor` JSON object of model metadata."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def matches(self, shape: Sequence[int]) -> bool:
        """Whether a request shape fits this spec (rank equal, fixed dims equal)."""
        if len(shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, shape, strict=True))


@dataclass(frozen=True, slots=True)
class Tensor:
    """A decoded tensor: datatype, shape and its elements flattened in row-major order."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: Sequence[float | int | bool]


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of a tensor of `shape`."""
    return prod(shape)


def byte_size(datatype: str, count: int) -> int:
    """Bytes of `count` elements of a fixed-size datatype."""
    return struct.calcsize("<" + STRUCT_CODES[datatype]) * count


def check_shape(value: object, where: str) -> tuple[int, ...]:
    """A request's `shape`: a list of non-negative integers."""
    if not isinstance(value, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value
    ):
        raise TensorError(f"{where}: 'shape' must be a list of non-negative integers")
    return tuple(value)


def unpack(datatype: str, raw: bytes | memoryview, count: int, name: str) -> tuple[float, ...]:
    """Decode `count` little-endian elements; the size must match exactly, as Triton checks."""
    expected = byte_size(datatype, count)
    if len(raw) != expected:
        raise TensorError(
            f"unexpected total byte size {len(raw)} for input '{name}', expecting {expected}"
        )
    values: tuple[float, ...] = struct.unpack(f"<{count}{STRUCT_CODES[datatype]}", raw)
    return values


def pack(datatype: str, values: Sequence[float | int | bool]) -> bytes:
    """Encode elements little-endian, row-major, no padding (the binary tensor format)."""
    return struct.pack(f"<{len(values)}{STRUCT_CODES[datatype]}", *values)


def flatten_json(data: object, datatype: str, count: int, name: str) -> list[float | int | bool]:
    """The elements of a JSON `data` field, flat or nested like the shape, checked
    against the datatype and the element count the shape implies."""
    flat: list[object]
    if isinstance(data, list) and not any(isinstance(item, list) for item in data):
        flat = data  # the common case: already flat
    else:
        flat = []
        _flatten_into(data, flat, 0)
    if len(flat) != count:
        raise TensorError(
            f"Unable to parse 'data' of input '{name}': it has {len(flat)} elements "
            f"but its shape implies {count}"
        )
    if datatype == "BOOL":
        if not all(isinstance(item, bool) for item in flat):
            raise TensorError(f"Unable to parse 'data' of input '{name}': expected booleans")
    elif datatype in _INTEGER_TYPES:
        if not all(isinstance(item, int) and not isinstance(item, bool) for item in flat):
            raise TensorError(f"Unable to parse 'data' of input '{name}': expected integers")
    elif not all(isinstance(item, int | float) and not isinstance(item, bool) for item in flat):
        raise TensorError(f"Unable to parse 'data' of input '{name}': expected numbers")
    return flat  # type: ignore[return-value]  # checked element by element just above


def _flatten_into(data: object, out: list[object], depth: int) -> None:
    if depth > 32:
        raise TensorError("Unable to parse 'data': nested deeper than any tensor rank")
    if isinstance(data, list):
        for item in data:
            _flatten_into(item, out, depth + 1)
    else:
        out.append(data)


def to_float32(values: Sequence[float]) -> tuple[float, ...]:
    """Round doubles to the nearest float32, so JSON and binary answers agree exactly."""
    rounded: tuple[float, ...] = struct.unpack(f"<{len(values)}f", pack("FP32", values))
    return rounded
