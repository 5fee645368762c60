"""OTLP/HTTP protobuf: finished spans encoded as an `ExportTraceServiceRequest`.

Written by hand against opentelemetry/proto/trace/v1/trace.proto (the tests decode the
output with the official `opentelemetry-proto` classes), so the gateway needs neither
the OpenTelemetry SDK nor protobuf at run time. The encoder runs in the exporter's
background task; attribute pairs that repeat across requests (route, variant, version,
endpoint, ...) are encoded once and reused from a bounded cache.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final

from gateway.observability.tracing.span import Attributes, AttrValue, Span

CONTENT_TYPE: Final = "application/x-protobuf"
_LEN: Final = 2  # wire type: length-delimited
_CACHE_LIMIT: Final = 4096  # encoded key-value pairs kept; cleared when full
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative numbers as their 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or nested message)."""
    size = len(payload)
    if size < 0x80 and number < 16:  # most fields: a one-byte tag and length
        return bytes(((number << 3) | _LEN, size)) + payload
    return varint((number << 3) | _LEN) + varint(size) + payload


def any_value(value: AttrValue) -> bytes:
    """An `AnyValue` message (without its own field header)."""
    if isinstance(value, bool):  # before int: bool is an int
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    return _field(1, value.encode("utf-8", "replace"))


def key_value(key: str, value: AttrValue) -> bytes:
    """A `KeyValue` message (without its own field header)."""
    return _field(1, key.encode()) + _field(2, any_value(value))


# Attributes whose values differ per request: encoded every time, never cached.
UNCACHED: Final = frozenset(
    {
        "switchyard.request_id",
        "exception.message",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "url.full",
    }
)


class Encoder:
    """Spans to OTLP bytes for one resource and instrumentation scope."""

    def __init__(
        self, resource: Sequence[tuple[str, AttrValue]], scope: str, scope_version: str
    ) -> None:
        self._resource = _field(
            1, b"".join(_field(1, key_value(k, v)) for k, v in resource)
        )  # ResourceSpans.resource
        self._scope = _field(1, _field(1, scope.encode()) + _field(2, scope_version.encode()))
        # Encoded `KeyValue` fields by (field number, key, value): most attributes repeat
        # from request to request (route, variant, status...). Bools apart from ints, or
        # True and 1 would share an entry.
        self._pairs: dict[tuple[int, str, AttrValue], bytes] = {}
        self._bools: dict[tuple[int, str, bool], bytes] = {}
        self._keys: dict[str, bytes] = {}

    def _attributes(self, number: int, attributes: Attributes) -> bytes:
        pairs = self._pairs
        out = []
        for key, value in attributes:
            if type(value) is bool:
                flag = (number, key, value)
                encoded = self._bools.get(flag)
                if encoded is None:
                    encoded = self._bools[flag] = _field(number, key_value(key, value))
            elif type(value) is float or key in UNCACHED:
                encoded = _field(number, self._key(key) + _field(2, any_value(value)))
            else:
                entry = (number, key, value)
                encoded = pairs.get(entry)
                if encoded is None:
                    if len(pairs) >= _CACHE_LIMIT:
                        pairs.clear()
                    encoded = pairs[entry] = _field(number, key_value(key, value))
            out.append(encoded)
        return b"".join(out)

    def _key(self, key: str) -> bytes:
        found = self._keys.get(key)
        if found is None:
            found = self._keys[key] = _field(1, key.encode())
        return found

    def span(self, span: Span) -> bytes:
        """One `Span` message, framed as field 2 of `ScopeSpans`."""
        parts = [
            b"\x0a\x10",  # 1: trace_id, 16 bytes
            span.trace_id.to_bytes(16),
            b"\x12\x08",  # 2: span_id, 8 bytes
            span.span_id.to_bytes(8),
        ]
        if span.trace_state:
            parts.append(_field(3, span.trace_state.encode()))
        if span.parent_id:
            parts += (b"\x22\x08", span.parent_id.to_bytes(8))  # 4: parent_span_id
        parts += (
            _field(5, span.name.encode("utf-8", "replace")),
            b"\x30",  # 6: kind
            varint(span.kind),
            b"\x39",  # 7: start_time_unix_nano, fixed64
            _pack_fixed64(span.start_ns),
            b"\x41",  # 8: end_time_unix_nano, fixed64
            _pack_fixed64(span.end_ns),
            self._attributes(9, span.all_attributes()),
        )
        for time_ns, name, attributes in span.events:
            event = b"\x09" + _pack_fixed64(time_ns) + _field(2, name.encode())
            parts.append(_field(11, event + self._attributes(3, attributes)))
        if span.status:
            status = b"\x18" + varint(span.status)  # 3: code
            if span.status_message:
                status = _field(2, span.status_message.encode("utf-8", "replace")) + status
            parts.append(_field(15, status))
        parts += (b"\x85\x01", _pack_fixed32(span.flags))  # 16: flags, fixed32
        return _field(2, b"".join(parts))

    def request(self, encoded_spans: Iterable[bytes]) -> bytes:
        """An `ExportTraceServiceRequest` holding spans already encoded by `span`."""
        scope_spans = _field(2, self._scope + b"".join(encoded_spans))
        return _field(1, self._resource + scope_spans)

    def encode(self, spans: Iterable[Span]) -> bytes:
        return self.request(self.span(s) for s in spans)
