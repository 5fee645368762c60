"""Shadow traffic in the admin API: how each shadow's copies went and how it agreed.

- `GET /admin/shadow`: every route with shadows, in brief (agreement per shadow).
- `GET /admin/shadow/{route}`: per shadow and resolved version: copies by outcome,
  skipped and dropped by reason, comparisons by result, the agreement rate, and the
  mean and percentiles of similarity, length ratio, probability delta, max abs error
  and latency delta (over the last comparisons kept, 1,024 per shadow version and
  process). `?since=UNIX_TIME` limits the agreement counts to that stretch.

The counts (copies, comparisons, agreement) are the fleet's: read from the statistics
source (`gateway.stats`: this process, the supervisor's merged workers, or Prometheus
over every replica), named in the answer's `source`; with the source down the answer is
a 503 saying why. The distributions and per-output agreement come from the comparisons
the answering processes keep in memory (`workers` says how many), and so does a
`?since=` agreement (`agreement_since`), which counters cannot answer.

With `--workers N` the supervisor (`gateway.admin.fleet`) asks every worker for its raw
numbers (`?raw=1`) and merges them (`merge_raw`) before summarising; one worker adds the
fleet counts (`&fleet=1`). `GET /admin/shadow` comes from one worker: its counts are the
source's already.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.admin.endpoints import Handler
from gateway.admin.views import unavailable
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.observability.shadow_metrics import SAMPLE_FIELDS, ShadowMetrics
from gateway.stats.counts import ShadowCounts
from gateway.stats.sources import StatsSource, StatsUnavailable

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
        "since": since,
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
            merged = {
                "route": view["route"],
                "workers": 0,
                "since": view.get("since"),
                "config": view["config"],
                "series": [],
            }
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


async def fleet_view(source: StatsSource, route: str) -> dict[str, Any]:
    """The fleet's counts of `route`'s shadows from `source`; StatsUnavailable if it
    does not answer."""
    evidence = await source.read(route)
    return {
        "source": evidence.origin.to_json(),
        "series": [
            {"shadow": shadow, "version": version, **counts.to_json()}
            for (shadow, version), counts in evidence.stats.shadow_versions().items()
        ],
    }


def summarise(raw: dict[str, Any], fleet: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The admin answer from (merged) raw numbers, with the counts of `fleet` (a
    `fleet_view`) where given, and the raw numbers' own counts where not."""
    details = {(e["shadow"], e["version"]): e for e in raw["series"]}
    counted = {(e["shadow"], e["version"]): e for e in (fleet or {}).get("series", ())}
    serving = {(c["name"], c["version"]) for c in raw["config"]}
    since = raw.get("since")
    keys = set(details) | set(counted) if fleet is not None else set(details)
    shadows = []
    for key in sorted(keys, key=lambda k: (k[0], k not in serving, k[1])):
        entry = details.get(key)
        counts = counted[key] if fleet is not None and key in counted else entry
        if counts is None:  # the fleet knows a version this process never saw
            counts = {"in_flight": 0, **{name: {} for name in _COUNTS}}
        agreement = _fleet_agreement(counts)
        if entry is not None and (fleet is None or since is not None):
            agreement = entry["agreement"]  # `since` needs the processes' own windows
        judged = agreement["agreed"] + agreement["disagreed"] + agreement["uncomparable"]
        recent = entry["recent"] if entry is not None else []
        columns = list(zip(*recent, strict=True)) if recent else []
        stats = {}
        for i, name in enumerate(SAMPLE_FIELDS):
            values = [v for v in columns[i] if v is not None] if columns else []
            scale = 1000.0 if name == "latency_delta_s" else 1.0
            stats["latency_delta_ms" if scale != 1.0 else name] = _distribution(values, scale)
        outputs = entry["outputs"] if entry is not None else {}
        shadows.append(
            {
                "shadow": key[0],
                "version": key[1],
                "serving": key in serving or bool(entry and entry["serving"]),
                "in_flight": counts["in_flight"],
                "sent": sum(counts["requests"].values()),
                **{name: dict(sorted(counts[name].items())) for name in _COUNTS},
                "agreement_rate": agreement["agreed"] / judged if judged else None,
                "agreement": agreement,
                **({"agreement_since": since} if since is not None else {}),
                **stats,
                "outputs": {
                    name: {"agreed": a, "compared": c, "rate": a / c if c else None}
                    for name, (a, c) in sorted(outputs.items())
                },
            }
        )
    return {
        "route": raw["route"],
        "source": None if fleet is None else fleet["source"],
        "workers": raw["workers"],
        "config": raw["config"],
        "shadows": shadows,
    }


def _fleet_agreement(counts: Mapping[str, Any]) -> dict[str, int]:
    """Agreement counts from counters: comparisons by result, failed copies."""
    found = ShadowCounts(counts["requests"], {}, {}, counts["comparisons"])
    c = found.comparisons
    return {
        "agreed": found.agreed,
        "disagreed": c.get("disagree", 0),
        "uncomparable": c.get("uncomparable", 0),
        "failed": found.failed,
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
    snapshot: Callable[[], RuntimeSnapshot], metrics: ShadowMetrics, source: StatsSource
) -> dict[str, Handler]:
    """The handlers of the shadow endpoints of one process (`gateway.admin.endpoints`)."""

    async def overview(_: Request) -> Response:
        snap = snapshot()
        names = {r.name for r in snap.routes.values() if r.shadows}
        names |= {s.route for s in metrics.all()}
        ordered = sorted(names)
        try:
            views = await asyncio.gather(*(fleet_view(source, name) for name in ordered))
        except StatsUnavailable as exc:
            return unavailable(exc)
        routes: dict[str, list[dict[str, Any]]] = {}
        for name, view in zip(ordered, views, strict=True):
            routes[name] = []
            for entry in view["series"]:
                found = _fleet_agreement(entry)
                compared = found["agreed"] + found["disagreed"] + found["uncomparable"]
                routes[name].append(
                    {
                        "shadow": entry["shadow"],
                        "version": entry["version"],
                        "agreed": found["agreed"],
                        "compared": compared,
                        "agreement_rate": found["agreed"] / compared if compared else None,
                    }
                )
        origin = views[0]["source"] if views else {"kind": source.kind, "url": source.url}
        return JSONResponse({"source": origin, "routes": routes})

    async def one(request: Request) -> Response:
        route = request.path_params["route"]
        try:
            since = _since(request)
        except ValueError:
            return JSONResponse({"error": "'since' must be a unix time in seconds"}, 400)
        raw = raw_view(route, snapshot(), metrics, since)
        if raw is None:
            return JSONResponse({"error": f"route {route!r} has no shadows"}, status_code=404)
        wants_raw = request.query_params.get("raw") == "1"
        fleet = None
        if not wants_raw or request.query_params.get("fleet") == "1":
            try:
                fleet = await fleet_view(source, route)
            except StatsUnavailable as exc:
                return unavailable(exc)
        if wants_raw:
            return JSONResponse({**raw, "fleet": fleet} if fleet is not None else raw)
        return JSONResponse(summarise(raw, fleet))

    return {"shadow": overview, "shadow_route": one}
