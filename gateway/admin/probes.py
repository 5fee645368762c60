"""The admin port's open endpoints, answered without the admin API: /metrics, /livez, /readyz.

These three are what hits a worker all its life: Prometheus scrapes it, the kubelet
probes it. If they needed the admin API (uvicorn, Starlette and the views: ~6 MB of a
worker's RSS, issue 18), every production worker would load it seconds after start, and
loading it lazily would save nothing. So the admin listener (`gateway.admin.lazy`)
answers them itself, with these functions, and loads the admin API only for the first
request to anything else. `gateway.admin.app` serves the same paths with the same
functions once it is loaded, so both answer alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from gateway.observability.exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    generate_openmetrics,
    generate_text,
)

if TYPE_CHECKING:
    from gateway.dataplane.plane import DataPlane

CONTENT_TYPE_JSON = "application/json"
# The paths answered here, for GET and HEAD. Anything else goes to the admin API.
PATHS = frozenset({"/metrics", "/livez", "/readyz"})


@dataclass(frozen=True, slots=True)
class ProbeReply:
    status: int
    content_type: str
    body: bytes


class Probes:
    """The answers of one gateway process to its open admin endpoints."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._registry = plane.metrics.registry()

    def answer(self, path: str, accept: str = "") -> ProbeReply | None:
        """The reply to GET `path` (no query), or None where it is not a probe path."""
        if path == "/metrics":
            return self.metrics(accept)
        if path == "/livez":
            return self.livez()
        if path == "/readyz":
            return self.readyz()
        return None

    def metrics(self, accept: str) -> ProbeReply:
        # OpenMetrics when the scraper asks for it (Prometheus does, with exemplar
        # storage on): the only format that carries the trace-id exemplars.
        if "application/openmetrics-text" in accept:
            body = generate_openmetrics(self._registry.collect())
            return ProbeReply(200, CONTENT_TYPE_OPENMETRICS, body)
        return ProbeReply(200, CONTENT_TYPE_TEXT, generate_text(self._registry.collect()))

    def livez(self) -> ProbeReply:
        return _json(200, {"status": "alive"})

    def readyz(self) -> ProbeReply:
        plane = self._plane
        if plane.draining:
            return _json(503, {"status": "draining"})
        snap = plane.ref.current
        if not snap.routes:
            return _json(503, {"status": "no routes loaded"})
        return _json(200, {"status": "ready", "policy": snap.version})


def _json(status: int, payload: dict[str, str]) -> ProbeReply:
    return ProbeReply(status, CONTENT_TYPE_JSON, orjson.dumps(payload))
