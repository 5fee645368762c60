"""Finished-span records: what the exporter encodes, built only for sampled requests."""

from __future__ import annotations

from typing import Final, Protocol

AttrValue = str | bool | int | float
Attributes = list[tuple[str, AttrValue]]


class Facts(Protocol):
    """What a span's attributes are derived from when it is exported (a request's
    record): the request path stores one object instead of building the attributes."""

    def attributes(self) -> Attributes: ...


# OTLP's enums (opentelemetry/proto/trace/v1/trace.proto).
KIND_SERVER: Final = 2
KIND_CLIENT: Final = 3
STATUS_UNSET: Final = 0
STATUS_OK: Final = 1
STATUS_ERROR: Final = 2
# Span.flags: the W3C trace flags in bits 0-7, then whether the parent is known to be
# local or remote (bit 8) and which (bit 9).
FLAG_SAMPLED: Final = 0x01
FLAG_HAS_IS_REMOTE: Final = 0x100
FLAG_IS_REMOTE: Final = 0x200


class Span:
    """One span: ids, name, kind, times (Unix nanoseconds), attributes, events, status."""

    __slots__ = (
        "attributes",
        "end_ns",
        "events",
        "facts",
        "flags",
        "kind",
        "name",
        "parent_id",
        "span_id",
        "start_ns",
        "status",
        "status_message",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent_id: int,
        name: str,
        kind: int,
        start_ns: int,
        *,
        trace_state: str = "",
        flags: int = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # 0: a root span
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.trace_state = trace_state
        self.flags = flags
        self.attributes: Attributes = []
        self.events: list[tuple[int, str, Attributes]] = []
        self.status = STATUS_UNSET
        self.status_message = ""
        self.facts: Facts | None = None

    def all_attributes(self) -> Attributes:
        """Attributes derived from the span's facts, then those set on it."""
        if self.facts is None:
            return self.attributes
        return self.facts.attributes() + self.attributes

    def set(self, key: str, value: AttrValue) -> None:
        self.attributes.append((key, value))

    def event(self, name: str, time_ns: int, attributes: Attributes | None = None) -> None:
        self.events.append((time_ns, name, attributes or []))

    def fail(self, error_type: str, message: str = "") -> None:
        """Status ERROR, with the `error.type` attribute the conventions ask for."""
        self.status = STATUS_ERROR
        self.status_message = message
        self.attributes.append(("error.type", error_type))

    def __repr__(self) -> str:
        return f"Span({self.name!r}, kind={self.kind}, span_id={self.span_id:016x})"
