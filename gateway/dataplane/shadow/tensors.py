"""KServe v2 (Open Inference Protocol) answers compared output by output.

Outputs are matched by name; each agrees when its shape is the same and every element
is equal within the numeric tolerance (exactly, for strings and booleans). Both the
JSON form and the binary tensor extension (a JSON header, then each output's raw
little-endian bytes) are read.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from gateway.dataplane.shadow.verdict import Comparison, Tolerance, close, is_number
from gateway.kserve_types import STRUCT_CODES


def compare_tensors(primary: bytes, shadow: bytes, tolerance: Tolerance) -> Comparison:
    """Per-output agreement of two KServe v2 inference responses (JSON `outputs`)."""
    a, b = _outputs(primary), _outputs(shadow)
    if a is None or b is None:
        side = "primary" if a is None else "shadow"
        return Comparison("uncomparable", "tensor", detail=f"{side} body has no v2 outputs")
    verdicts: list[tuple[str, bool]] = []
    notes: list[str] = []
    worst: float | None = None
    for name, (shape, data) in a.items():
        other = b.get(name)
        if other is None:
            verdicts.append((name, False))
            notes.append(f"{name}: missing")
            continue
        if list(shape) != list(other[0]) or len(data) != len(other[1]):
            verdicts.append((name, False))
            notes.append(f"{name}: shape {shape} vs {other[0]}")
            continue
        ok, err = _same_elements(data, other[1], tolerance.numeric)
        if err is not None:
            worst = err if worst is None else max(worst, err)
        verdicts.append((name, ok))
        if not ok:
            notes.append(f"{name}: differs" + (f" (max |delta| {err:.3g})" if err else ""))
    for name in b:
        if name not in a:
            notes.append(f"{name}: only in the shadow")
    agreed = all(ok for _, ok in verdicts) and len(a) == len(b)
    share = sum(ok for _, ok in verdicts) / len(verdicts) if verdicts else 1.0
    return Comparison(
        "agree" if agreed else "disagree",
        "tensor",
        similarity=share,
        max_abs_error=worst,
        outputs=tuple(verdicts),
        detail="; ".join(notes) or "all outputs agree",
    )


def _outputs(body: bytes) -> dict[str, tuple[list[Any], list[Any]]] | None:
    """Each output's (shape, flat data), from a JSON answer or one using the binary
    tensor extension (a JSON header, then each output's raw bytes in order)."""
    doc, tail = _v2_header(body)
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list):
        return None
    out: dict[str, tuple[list[Any], list[Any]]] = {}
    at = 0
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        shape = item.get("shape")
        data = item.get("data")
        params = item.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            raw = tail[at : at + size]
            at += size
            if len(raw) != size:
                return None
            decoded = _binary_elements(str(item.get("datatype", "")), raw)
            if decoded is None:
                return None
            data = decoded
        if not isinstance(data, list):
            return None
        out[item["name"]] = (shape if isinstance(shape, list) else [], list(_flat(data)))
    return out


def _v2_header(body: bytes) -> tuple[Any, bytes]:
    """The JSON document at the start of `body`, and the bytes after it."""
    try:
        return orjson.loads(body), b""
    except orjson.JSONDecodeError:
        pass
    # Binary extension: find where the JSON header ends. latin-1 maps each byte to one
    # character, so the decoder's end index is a byte offset (non-ASCII bytes only
    # occur inside JSON strings, whose structure it leaves alone).
    try:
        doc, end = json.JSONDecoder().raw_decode(body.decode("latin-1"))
    except ValueError:
        return None, b""
    return doc, body[end:]


def _binary_elements(datatype: str, raw: bytes) -> list[Any] | None:
    """Elements of one output's raw bytes (little-endian, as the extension defines)."""
    if datatype == "BYTES":
        items: list[Any] = []
        at = 0
        while at + 4 <= len(raw):
            (length,) = struct.unpack_from("<I", raw, at)
            items.append(raw[at + 4 : at + 4 + length].decode("utf-8", "replace"))
            at += 4 + length
        return items if at == len(raw) else None
    code = STRUCT_CODES.get(datatype)
    if code is None or len(raw) % struct.calcsize(code):
        return None
    return [v for (v,) in struct.iter_unpack("<" + code, raw)]


def _flat(data: list[Any]) -> Iterator[Any]:
    for item in data:
        if isinstance(item, list):
            yield from _flat(item)
        else:
            yield item


def _same_elements(a: Sequence[Any], b: Sequence[Any], tol: float) -> tuple[bool, float | None]:
    """Whether every pair agrees (numbers within `tol`, others exactly), and the largest
    numeric difference (None when there are no numeric pairs)."""
    ok = True
    worst: float | None = None
    for x, y in zip(a, b, strict=True):
        if is_number(x) and is_number(y):
            diff = abs(float(x) - float(y))
            worst = diff if worst is None or diff > worst else worst
            if not close(x, y, tol):
                ok = False
        elif x != y:
            ok = False
    return ok, worst
