"""Shadow traffic in the admin API: how each shadow's copies went and how it agreed.

- `GET /admin/shadow`: every route with shadows, in brief (agreement rate per shadow).
- `GET /admin/shadow/{route}`: per shadow and resolved version: copies by outcome,
  skipped and dropped by reason, comparisons by result, the agreement rate, and the
  mean and percentiles of similarity, length ratio, probability delta, max abs error
  and latency delta (over the last comparisons kept, 1,024 per shadow version and
  process). `?since=UNIX_TIME` limits the agreement counts to that stretch.

With `--workers N` the supervisor (`gateway.admin.fleet`) asks every worker (for its raw
numbers, `?raw=1`) and merges the answers (`merge_raw`, `merge_overviews`) before
summarising, so they cover all workers; `workers` in an answer says how many answered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.admin.endpoints import Handler
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.observability.shadow_metrics import SAMPLE_FIELDS, ShadowMetrics

_COUNTS = ("requests", "skipped", "dropped", "comparisons")
_AGREEMENT = ("agreed", "disagreed", "uncomparable", "failed")


def raw_view(
    route: str, snap: RuntimeSnapshot, metrics: ShadowMetrics, since: float | None = None
) -> dict[str, Any] | None:
    """This process's mergeable numbers for `route`; None if it has no shadows at all."""
    compiled = snap.routes.get(route)
    shadows = compiled.shadows if compiled is not None else ()
    series = metrics.of_route(route)
    if not shadows and not series:
        return None
    serving = {(s.name, s.version) for s in shadows}
    return {
        "route": route,
        "workers": 1,
        "config": [
            {
                "name": s.name,
                "target": s.target,
                "version": s.version,
                "sample": s.sample,
                "max_inflight": s.max_inflight,
                "endpoints": [e.url for e in s.endpoints],
                "unavailable": s.unavailable,
            }
            for s in shadows
        ],
        "series": [
            {
                "shadow": s.shadow,
                "version": s.version,
                "serving": (s.shadow, s.version) in serving,
                "in_flight": s.in_flight,
                **{name: dict(getattr(s, name)) for name in _COUNTS},
                "agreement": _agreement_counts(s.agreement(since)),
                "outputs": {k: list(v) for k, v in s.outputs.items()},
                "recent": [list(sample) for sample in s.recent],
            }
            for s in series
        ],
    }


def _agreement_counts(found: Any) -> dict[str, int]:
    return {name: int(getattr(found, name)) for name in _AGREEMENT}


def merge_raw(views: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Several workers' `raw_view`s of one route as one: counts summed, samples joined."""
    merged: dict[str, Any] | None = None
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for view in views:
        if merged is None:
            merged = {"route": view["route"], "workers": 0, "config": view["config"], "series": []}
        merged["workers"] += int(view.get("workers", 1))
        for entry in view["series"]:
            key = (entry["shadow"], entry["version"])
            into = index.get(key)
            if into is None:
                into = index[key] = {
                    "shadow": entry["shadow"],
                    "version": entry["version"],
                    "serving": False,
                    "in_flight": 0,
                    **{name: {} for name in _COUNTS},
                    "agreement": dict.fromkeys(_AGREEMENT, 0),
                    "outputs": {},
                    "recent": [],
                }
                merged["series"].append(into)
            into["serving"] = into["serving"] or entry["serving"]
            into["in_flight"] += entry["in_flight"]
            for name in _COUNTS:
                for key2, n in entry[name].items():
                    into[name][key2] = into[name].get(key2, 0) + n
            for key2, n in entry["agreement"].items():
                into["agreement"][key2] = into["agreement"].get(key2, 0) + n
            for output, (agreed, compared) in entry["outputs"].items():
                slot = into["outputs"].setdefault(output, [0, 0])
                slot[0] += agreed
                slot[1] += compared
            into["recent"].extend(entry["recent"])
    return merged


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """The admin answer from (merged) raw numbers."""
    shadows = []
    for entry in sorted(raw["series"], key=lambda e: (e["shadow"], not e["serving"], e["version"])):
        counts = entry["agreement"]
        judged = counts["agreed"] + counts["disagreed"] + counts["uncomparable"]
        columns = list(zip(*entry["recent"], strict=True)) if entry["recent"] else []
        stats = {}
        for i, name in enumerate(SAMPLE_FIELDS):
            values = [v for v in columns[i] if v is not None] if columns else []
            scale = 1000.0 if name == "latency_delta_s" else 1.0
            stats["latency_delta_ms" if scale != 1.0 else name] = _distribution(values, scale)
        shadows.append(
            {
                "shadow": entry["shadow"],
                "version": entry["version"],
                "serving": entry["serving"],
                "in_flight": entry["in_flight"],
                "sent": sum(entry["requests"].values()),
                **{name: dict(sorted(entry[name].items())) for name in _COUNTS},
                "agreement_rate": counts["agreed"] / judged if judged else None,
                "agreement": counts,
                **stats,
                "outputs": {
                    name: {"agreed": a, "compared": c, "rate": a / c if c else None}
                    for name, (a, c) in sorted(entry["outputs"].items())
                },
            }
        )
    return {
        "route": raw["route"],
        "workers": raw["workers"],
        "config": raw["config"],
        "shadows": shadows,
    }


def _distribution(values: list[float], scale: float) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None}
    ordered = sorted(v * scale for v in values)
    return {
        "n": len(ordered),
        "mean": round(math.fsum(ordered) / len(ordered), 6),
        "p50": round(_quantile(ordered, 0.5), 6),
        "p90": round(_quantile(ordered, 0.9), 6),
        "p99": round(_quantile(ordered, 0.99), 6),
    }


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _since(request: Request) -> float | None:
    text = request.query_params.get("since")
    if text is None:
        return None
    value = float(text)  # ValueError becomes a 400 in the handler
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def shadow_handlers(
    snapshot: Callable[[], RuntimeSnapshot], metrics: ShadowMetrics
) -> dict[str, Handler]:
    """The handlers of the shadow endpoints of one process (`gateway.admin.endpoints`)."""

    async def overview(_: Request) -> Response:
        snap = snapshot()
        names = {r.name for r in snap.routes.values() if r.shadows}
        names |= {s.route for s in metrics.all()}
        routes = {}
        for name in sorted(names):
            routes[name] = [
                {
                    "shadow": s.shadow,
                    "version": s.version,
                    "agreed": (found := s.agreement()).agreed,
                    "compared": found.compared,
                    "agreement_rate": found.rate,
                }
                for s in metrics.of_route(name)
            ]
        return JSONResponse({"workers": 1, "routes": routes})

    async def one(request: Request) -> Response:
        route = request.path_params["route"]
        try:
            since = _since(request)
        except ValueError:
            return JSONResponse({"error": "'since' must be a unix time in seconds"}, 400)
        raw = raw_view(route, snapshot(), metrics, since)
        if raw is None:
            return JSONResponse({"error": f"route {route!r} has no shadows"}, status_code=404)
        if request.query_params.get("raw") == "1":
            return JSONResponse(raw)
        return JSONResponse(summarise(raw))

    return {"shadow": overview, "shadow_route": one}


def merge_overviews(views: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' `GET /admin/shadow` answers as one."""
    workers = 0
    merged: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for view in views:
        workers += int(view.get("workers", 1))
        for route, entries in view["routes"].items():
            into = merged.setdefault(route, {})
            for entry in entries:
                key = (entry["shadow"], entry["version"])
                slot = into.setdefault(
                    key, {"shadow": key[0], "version": key[1], "agreed": 0, "compared": 0}
                )
                slot["agreed"] += entry["agreed"]
                slot["compared"] += entry["compared"]
    routes = {}
    for route in sorted(merged):
        routes[route] = [
            {**e, "agreement_rate": e["agreed"] / e["compared"] if e["compared"] else None}
            for _, e in sorted(merged[route].items())
        ]
    return {"workers": workers, "routes": routes}
