"""JSON views of the runtime snapshot for the admin API."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse, Response

from gateway.controlplane.policy.reload import Held, PolicyReloader, ReloadResult
from gateway.controlplane.registry.binding import VariantKey
from gateway.dataplane.snapshot import Route, RuntimeSnapshot
from gateway.stats.sources import StatsUnavailable


def snapshot_view(snap: RuntimeSnapshot) -> dict[str, Any]:
    return {
        "version": snap.version,
        "created_at": snap.created_at,
        "sources": list(snap.sources),
        "routes": sorted(snap.routes),
    }


def route_view(
    route: Route, now: float, registry: Mapping[VariantKey, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One route: variants with share, target -> version -> endpoints, endpoint health."""
    registry = registry or {}
    return {
        "route": route.name,
        "protocol": route.protocol,
        "source": route.source,
        "unavailable": route.unavailable,
        "sticky": None if route.sticky is None else f"{route.sticky.source}:{route.sticky.key}",
        "fallback": [route.variants[i].name for i in route.fallback],
        "timeouts": {
            "connect": route.timeouts.connect,
            "first_byte": route.timeouts.first_byte,
            "total": route.timeouts.total,
            "idle": route.timeouts.idle,
        },
        "variants": [
            {
                "name": v.name,
                "weight": v.weight,
                "share": v.weight / route.total_weight if route.total_weight else 0.0,
                "target": v.target,
                "version": v.version,
                "registry": registry.get((route.name, v.name)),
                "upstream_model": v.upstream_model,
                "endpoints": [
                    {
                        "url": e.url,
                        "in_flight": e.state.in_flight,
                        "ejected_for_s": max(0.0, round(e.state.ejected_until - now, 3)),
                        "ejections": e.state.ejections,
                        "consecutive_failures": e.state.consecutive_failures,
                    }
                    for e in v.endpoints
                ],
            }
            for v in route.variants
        ],
    }


def routes_view(
    snap: RuntimeSnapshot,
    pool: dict[str, Any],
    registry: Mapping[VariantKey, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every route of the snapshot, plus the upstream pool's connection counts."""
    now = time.monotonic()
    return {
        "version": snap.version,
        "routes": [route_view(snap.routes[name], now, registry) for name in sorted(snap.routes)],
        "upstream_connections": pool,
    }


def reload_view(result: ReloadResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome,
        "version": result.version,
        "previous": result.previous,
        "reason": result.reason,
        "problems": [str(p) for p in result.problems],
        "changes": list(result.changes),
        "held": held_view(result.held),
    }


def held_view(held: Held | None) -> dict[str, Any] | None:
    """A held reload: why, which routes it would remove, and how to apply it anyway."""
    if held is None:
        return None
    return {
        "reason": held.reason,
        "routes": list(held.routes),
        "version": held.version,
        "source": held.source,
        "since": held.since,
        "message": held.message,
        "changes": list(held.changes),
    }


def reload_status_view(snap: RuntimeSnapshot, reloader: PolicyReloader) -> dict[str, Any]:
    """`GET /admin/reload`: what serves, whether a reload is held, what the last did."""
    last = reloader.last
    return {
        "version": snap.version,
        "routes": sorted(snap.routes),
        "source": reloader.source.description,
        "held": held_view(reloader.held),
        "last": None if last is None else reload_view(last),
    }


def unavailable(exc: StatsUnavailable) -> Response:
    """The 503 of an answer whose statistics source did not answer: why, and which source."""
    return JSONResponse({"error": exc.reason, "source": exc.origin.to_json()}, status_code=503)
