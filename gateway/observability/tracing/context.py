"""W3C Trace Context: `traceparent` parsed and written, and the ids of new spans.

Ids are plain integers (128-bit trace ids, 64-bit span ids): cheap to draw, compare
and format, and turned into bytes only when a span is encoded for export.
"""

from __future__ import annotations

import os
import random
from typing import Final

TRACEPARENT: Final = b"traceparent"
TRACESTATE: Final = b"tracestate"
LOW_64: Final = (1 << 64) - 1
# W3C Trace Context: a vendor should propagate at least 512 characters of tracestate;
# a span records it only up to that length (the header itself is forwarded as it came).
MAX_TRACESTATE: Final = 512
_HEX: Final = b"0123456789abcdef"


def parse_traceparent(value: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent span id, trace flags) of a valid `traceparent`, else None.

    The rules of W3C Trace Context level 1: version 00 is exactly 55 characters; a
    later version may append fields after a dash; version ff, upper-case hex and
    all-zero ids are invalid (the header is then ignored, as if absent).
    """
    value = value.strip(b" \t")
    size = len(value)
    if size < 55 or value[2] != 45 or value[35] != 45 or value[52] != 45:  # "-"
        return None
    version = value[0:2]
    if version == b"ff" or version.translate(None, _HEX):
        return None
    if (version == b"00" and size != 55) or (size > 55 and value[55] != 45):
        return None
    trace_hex, span_hex, flags_hex = value[3:35], value[36:52], value[53:55]
    if trace_hex.translate(None, _HEX) or span_hex.translate(None, _HEX):
        return None
    if flags_hex.translate(None, _HEX):
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(flags_hex, 16)


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    """The `traceparent` value naming `span_id` as the parent of what comes next."""
    return b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")


def without_traceparent(headers: bytes) -> bytes:
    """HTTP/1.1 header lines (lower-case names, CRLF-ended) minus a `traceparent` field:
    a sampled request's backend gets the gateway's own instead of the caller's."""
    at = headers.find(b"traceparent:")
    while at > 0 and headers[at - 1] != 10:  # "\n": only a whole field name counts
        at = headers.find(b"traceparent:", at + 1)
    if at < 0:
        return headers
    end = headers.find(b"\r\n", at)
    return headers[:at] + (headers[end + 2 :] if end >= 0 else b"")


def trace_hex(trace_id: int) -> str:
    """A trace id as the 32 lower-case hex digits every tracing UI searches for."""
    return f"{trace_id:032x}"


def span_hex(span_id: int) -> str:
    return f"{span_id:016x}"


class IdSource:
    """Random, never-zero span and trace ids (a seeded RNG: no system call per id)."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(int.from_bytes(os.urandom(16)) if seed is None else seed)

    def bits64(self) -> int:
        """64 random bits (may be zero: callers that need an id use `span_id`)."""
        return self._rng.getrandbits(64)

    def span_id(self) -> int:
        while True:
            value = self._rng.getrandbits(64)
            if value:
                return value

    def trace_id(self, low: int) -> int:
        """A trace id whose lower 64 bits are `low` (the ratio sampler's draw)."""
        while True:
            value = (self._rng.getrandbits(64) << 64) | low
            if value:
                return value
