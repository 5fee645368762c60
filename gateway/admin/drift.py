"""Drift in the admin API: the worker's results per route, and its HTML reports.

Read from the drift worker's status file and report files (see `gateway.drift.status`),
so any gateway process (or supervisor worker) answers for the one drift worker; or,
when the worker runs elsewhere (one per fleet, `--drift-status-url`), from its HTTP API
at each request (`gateway.drift.remote`): a worker that does not answer makes the
request a 503 that says so.

- `GET /admin/drift`: every route with drift, in brief.
- `GET /admin/drift/{route}`: the route's windows per model version: drift share,
  per-column scores, window size, last evaluation, the episode, actions, and this
  process's sampling counters.
- `GET /admin/drift/{route}/report.html[?version=V]`: the latest Evidently report (of
  the most recently evaluated version unless one is named).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from gateway.admin.endpoints import Handler
from gateway.drift.remote import WorkerUnreachable
from gateway.drift.status import REPORT_KINDS, report_path
from gateway.observability.drift_metrics import WORKER_STALE_AFTER, DriftCounters


def worker_view(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """Whether the drift worker reports in, and what it says about itself."""
    if status is None:
        return {"up": False, "error": "no drift worker has run yet"}
    heartbeat = float(status.get("heartbeat") or 0.0)
    age = time.time() - heartbeat if heartbeat else None
    view = {
        "up": age is not None and age < WORKER_STALE_AFTER,
        "pid": status.get("pid"),
        "generation": status.get("generation"),
        "heartbeat_age_s": None if age is None else round(age, 3),
        "error": status.get("error"),
    }
    if status.get("listen"):  # where it receives samples, and serves HTTP
        view["listen"], view["http"] = status.get("listen"), status.get("http")
    return view


def unreachable(exc: WorkerUnreachable) -> Response:
    """503: the drift worker elsewhere did not answer."""
    return JSONResponse({"error": str(exc), "worker": {"up": False}}, status_code=503)


def route_view(
    route: str, status: Mapping[str, Any] | None, counters: DriftCounters
) -> dict[str, Any] | None:
    """One route's drift, or None if neither the worker nor this process knows it."""
    entry = ((status or {}).get("routes") or {}).get(route)
    sampled = {v: n for (r, v), n in counters.sent.items() if r == route}
    if entry is None and not sampled:
        return None
    entry = entry or {}
    versions = []
    for version, data in sorted((entry.get("versions") or {}).items()):
        report = None
        if data.get("report"):
            report = f"/admin/drift/{quote(route)}/report.html?version={quote(version)}"
        versions.append({"version": version, **data, "report_url": report})
    dropped: dict[str, dict[str, int]] = {}
    for (r, v), n in counters.buffer_full.items():
        if r == route:
            dropped.setdefault(v, {})["buffer_full"] = n
    for (r, v, reason), n in counters.dropped.items():
        if r == route:
            dropped.setdefault(v, {})[reason] = n
    return {
        "route": route,
        "worker": worker_view(status),
        "sample": entry.get("sample"),
        "reference": entry.get("reference"),
        "error": entry.get("error"),
        "actions": entry.get("actions") or {},
        "versions": versions,
        # Ground truth: the worker's labeled windows and retrain triggers, as it has them.
        "labels": {
            version: {
                **data,
                "report_url": (
                    f"/admin/drift/{quote(route)}/report.html?version={quote(version)}&kind=labels"
                    if data.get("report")
                    else None
                ),
            }
            for version, data in sorted((entry.get("labels") or {}).items())
        },
        "triggers": entry.get("triggers"),
        "this_process": {"sent": sampled, "dropped": dropped},
    }


def drift_handlers(drift_dir: str | Path, counters: DriftCounters) -> dict[str, Handler]:
    """The handlers of the drift endpoints (paths and token: `gateway.admin.endpoints`).

    The status comes through `counters.status` (limited to the routes this process
    samples) and reports are files under `drift_dir`; or both come from
    `counters.remote`, the worker's HTTP API.
    """

    async def read() -> Mapping[str, Any] | None:
        if counters.remote is not None:
            return await counters.remote.status()  # WorkerUnreachable: a 503
        return counters.status() if counters.status is not None else None

    async def overview(_: Request) -> Response:
        try:
            status = await read()
        except WorkerUnreachable as exc:
            return unreachable(exc)
        routes = {}
        for name, entry in sorted(((status or {}).get("routes") or {}).items()):
            versions = entry.get("versions") or {}
            routes[name] = {
                v: {"share": d.get("share"), "drifted": d.get("drifted"), "window": d.get("window")}
                for v, d in sorted(versions.items())
            }
        return JSONResponse({"worker": worker_view(status), "routes": routes})

    async def one(request: Request) -> Response:
        route = request.path_params["route"]
        try:
            status = await read()
        except WorkerUnreachable as exc:
            return unreachable(exc)
        view = route_view(route, status, counters)
        if view is None:
            return JSONResponse({"error": f"route {route!r} has no drift block"}, status_code=404)
        return JSONResponse(view)

    async def report(request: Request) -> Response:
        route = request.path_params["route"]
        try:
            status = await read()
        except WorkerUnreachable as exc:
            return unreachable(exc)
        kind = request.query_params.get("kind", "data")
        if kind not in REPORT_KINDS:
            message = f"kind must be one of {', '.join(REPORT_KINDS)}, not {kind[:32]!r}"
            return JSONResponse({"error": message}, status_code=400)
        entry = ((status or {}).get("routes") or {}).get(route) or {}
        # Data drift reports are per window of samples, concept drift's per labeled one.
        versions = entry.get("labels" if kind == "labels" else "versions") or {}
        version = request.query_params.get("version")
        if version is None:
            evaluated = [(d.get("evaluated_at") or 0, v) for v, d in versions.items()]
            version = max(evaluated)[1] if evaluated else None
        if version is None or version not in versions:
            message = f"no drift report for route {route!r}" + (
                f" version {version!r}" if version is not None else " yet"
            )
            return JSONResponse({"error": message}, status_code=404)
        what = "concept drift report" if kind == "labels" else "report"
        missing = JSONResponse(
            {"error": f"no {what} evaluated yet for {route!r} version {version!r}"},
            status_code=404,
        )
        if counters.remote is not None:
            try:
                html = await counters.remote.report(route, version, kind)
            except WorkerUnreachable as exc:
                return unreachable(exc)
            if html is None:
                return missing
            return Response(html, media_type="text/html; charset=utf-8")
        path = report_path(drift_dir, route, version, kind)
        if not path.is_file():
            return missing
        return FileResponse(path, media_type="text/html; charset=utf-8")

    return {"drift": overview, "drift_report": report, "drift_route": one}
