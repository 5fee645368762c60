"""The drift worker's HTTP side (`switchyard drift-worker --http HOST:PORT`).

For a worker on another machine than its gateways (one per fleet), what the status
file and the report files give on one machine:

- `GET /status`: the JSON the worker writes to `status.json`, as of now (open, like
  `/metrics`: numbers about the windows; the Deployment probes it);
- `GET /metrics`: the worker's drift metrics as Prometheus text (the families marked
  WORKER_SOURCED in `gateway.observability.drift_metrics`); gateways that read a remote
  worker leave them out of their own `/metrics`, so scrape the worker;
- `GET /report?route=R&version=V[&kind=labels]`: the latest Evidently report of one
  window (HTML; it shows the data's distributions, so it needs the admin token when
  one is set): data drift, or with `kind=labels` concept drift (the labeled window);
- `GET /livez`: the process answers.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.drift.status import REPORT_KINDS, report_path
from gateway.observability.drift_metrics import worker_families
from gateway.observability.exposition import CONTENT_TYPE_TEXT, generate_text

Status = Callable[[], Mapping[str, Any]]


def metrics_text(status: Status) -> bytes:
    """The worker's drift metrics in the Prometheus text format."""
    return generate_text(worker_families(status()))


def worker_app(status: Status, drift_dir: Path, token: str | None) -> Starlette:
    """The worker's HTTP API over its live `status` and the reports in `drift_dir`."""

    async def get_status(_: Request) -> Response:
        # orjson as for the file: NaN scores become null, not invalid JSON.
        body = orjson.dumps(status(), option=orjson.OPT_NON_STR_KEYS)
        return Response(body, media_type="application/json")

    async def metrics(_: Request) -> Response:
        return Response(metrics_text(status), media_type=CONTENT_TYPE_TEXT)

    async def livez(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def report(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse(
                    {"error": "reports require 'Authorization: Bearer <admin token>'"},
                    status_code=401,
                    headers={"www-authenticate": "Bearer"},
                )
        route = request.query_params.get("route")
        version = request.query_params.get("version")
        kind = request.query_params.get("kind", "data")
        if not route or version is None:
            return JSONResponse({"error": "route and version are required"}, status_code=400)
        if kind not in REPORT_KINDS:
            message = f"kind must be one of {', '.join(REPORT_KINDS)}, not {kind[:32]!r}"
            return JSONResponse({"error": message}, status_code=400)
        path = report_path(drift_dir, route, version, kind)
        if not path.is_file():
            what = "concept drift report" if kind == "labels" else "report"
            return JSONResponse(
                {"error": f"no {what} evaluated yet for {route!r} version {version!r}"},
                status_code=404,
            )
        return FileResponse(path, media_type="text/html; charset=utf-8")

    return Starlette(
        routes=[
            Route("/status", get_status),
            Route("/metrics", metrics),
            Route("/livez", livez),
            Route("/report", report),
        ]
    )
