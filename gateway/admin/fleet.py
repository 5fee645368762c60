"""The admin API of `--workers N`: the supervisor answers every endpoint from its workers.

The endpoints are the table in `gateway.admin.endpoints`, as in one gateway process;
each entry's `fleet` says how the supervisor answers it:

- `own`: `/livez` and `/readyz` from the supervisor's own state (ready once every
  worker is up, draining once it stops).
- `merged`: `/metrics` sums every worker's scrape (`gateway.admin.aggregate`; in
  OpenMetrics, with each bucket's newest exemplar, when the scraper asks for it), plus
  how many workers answered and how many were replaced; a shadow summary merges every
  worker's raw numbers (kept comparisons, `?since=` windows) and takes the fleet counts
  from one worker (`gateway.admin.shadow`).
- `each`: passed to every worker, query string included (a reload, `?remove=` and all;
  a registry webhook), and answered with each worker's reply.
- `one`: passed to one worker (reads that any worker answers, rollout commands). The
  workers read their statistics (experiments, shadow counts, rollout gates) from this
  supervisor's merged `/metrics` or from Prometheus (`gateway.stats`), so any worker
  answers for all of them.
- `writer`: the rollout views, asked of every worker and answered with the view of
  the one holding the rollout writer lock (`"writer": true`): only it keeps the last
  analysis (verdict, reason, gate numbers). With no writer among them, the first
  worker's. `worker` in the answer (and the `x-switchyard-worker` header) names the
  worker that answered.

The supervisor checks the bearer token as a process does, and passes the caller's
header on, so every worker checks it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any, Protocol

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.admin.aggregate import merge_expositions, merge_openmetrics
from gateway.admin.endpoints import Feature, Handler, build_app, served
from gateway.admin.shadow import merge_raw, summarise
from gateway.observability.exposition import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT

# The bearer token, the body's type, who gave a rollout command, and what authenticates
# a registry webhook (MLflow's `x-mlflow-*` HMAC signature headers).
_FORWARDED = frozenset({"authorization", "content-type", "x-switchyard-operator"})


class Workers(Protocol):
    """What the admin API reads of the supervisor."""

    @property
    def stopping(self) -> bool: ...

    @property
    def workers(self) -> Sequence[object]: ...

    def admins(self) -> list[str]:
        """The admin URLs of the workers that are up."""
        ...


def _passed_on(request: Request) -> dict[str, str]:
    return {
        name: value
        for name, value in request.headers.items()
        if name in _FORWARDED or name.startswith("x-mlflow-")
    }


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


def _json_or_text(reply: httpx.Response) -> Any:
    try:
        return reply.json()
    except ValueError:
        return reply.text


def build_fleet_app(sup: Workers, token: str | None, *, enabled: Collection[Feature]) -> Starlette:
    """The admin ASGI app of a multi-worker gateway: the same endpoints as one process."""

    async def metrics(request: Request) -> Response:
        # OpenMetrics when the scraper asks for it, as one process answers: the only
        # format that carries the workers' trace-id exemplars.
        openmetrics = "application/openmetrics-text" in request.headers.get("accept", "")
        asked = {"accept": CONTENT_TYPE_OPENMETRICS} if openmetrics else {}
        async with httpx.AsyncClient(timeout=5) as client:
            replies = await asyncio.gather(
                *(client.get(f"{a}/metrics", headers=asked) for a in sup.admins()),
                return_exceptions=True,
            )
        texts = [r.text for r in replies if isinstance(r, httpx.Response) and r.is_success]
        # Both tell a reader of these sums (a worker's statistics source, Prometheus)
        # that a worker's counts left them or restarted from zero inside them.
        restarts = sum(int(getattr(w, "restarts", 0)) for w in sup.workers)
        own = (
            "# HELP switchyard_workers Worker processes answering the metrics scrape.\n"
            "# TYPE switchyard_workers gauge\n"
            f"switchyard_workers {len(texts)}.0\n"
            "# HELP switchyard_worker_restarts_total Worker processes the supervisor replaced.\n"
            "# TYPE switchyard_worker_restarts_total counter\n"
            f"switchyard_worker_restarts_total {restarts}.0\n"
        )
        if openmetrics:
            return Response(merge_openmetrics(texts, own), media_type=CONTENT_TYPE_OPENMETRICS)
        body = merge_expositions(texts) + own
        return Response(body, media_type=CONTENT_TYPE_TEXT)

    async def livez(_: Request) -> Response:
        return JSONResponse({"status": "alive", "workers": len(sup.admins())})

    async def readyz(_: Request) -> Response:
        if sup.stopping:
            return JSONResponse({"status": "draining"}, status_code=503)
        if len(sup.admins()) < len(sup.workers):
            return JSONResponse({"status": "workers starting"}, status_code=503)
        return JSONResponse({"status": "ready", "workers": len(sup.workers)})

    async def each(request: Request) -> Response:
        body = await request.body()
        admins = sup.admins()
        async with httpx.AsyncClient(timeout=30) as client:
            replies = await asyncio.gather(
                *(
                    client.request(
                        request.method,
                        f"{a}{request.url.path}{_query(request)}",
                        content=body,
                        headers=_passed_on(request),
                    )
                    for a in admins
                ),
                return_exceptions=True,
            )
        results = []
        status = 200
        for admin, reply in zip(admins, replies, strict=True):
            if isinstance(reply, httpx.Response):
                status = max(status, reply.status_code)
                results.append(
                    {"worker": admin, "status": reply.status_code, "result": _json_or_text(reply)}
                )
            else:
                status = 502
                results.append({"worker": admin, "error": str(reply)})
        return JSONResponse({"workers": results}, status_code=status)

    async def one(request: Request) -> Response:
        admins = sup.admins()
        if not admins:
            return JSONResponse({"error": "no worker is up"}, status_code=503)
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                reply = await client.request(
                    request.method,
                    f"{admins[0]}{request.url.path}{_query(request)}",
                    content=await request.body(),
                    headers=_passed_on(request),
                )
        except httpx.HTTPError as exc:
            return JSONResponse({"worker": admins[0], "error": str(exc)}, status_code=502)
        return Response(
            reply.content,
            status_code=reply.status_code,
            media_type=reply.headers.get("content-type"),
        )

    async def ask(request: Request, path: str, params: list[dict[str, str]]) -> list[Any]:
        """GET `path` of every worker, the i-th with `params[i]` (the last for the rest)."""
        admins = sup.admins()
        async with httpx.AsyncClient(timeout=10) as client:
            return await asyncio.gather(
                *(
                    client.get(
                        f"{a}{path}",
                        params=params[min(i, len(params) - 1)],
                        headers=_passed_on(request),
                    )
                    for i, a in enumerate(admins)
                ),
                return_exceptions=True,
            )

    async def writer_view(request: Request) -> Response:
        admins = sup.admins()
        if not admins:
            return JSONResponse({"error": "no worker is up"}, status_code=503)
        async with httpx.AsyncClient(timeout=10) as client:
            replies = await asyncio.gather(
                *(
                    client.get(
                        f"{a}{request.url.path}{_query(request)}", headers=_passed_on(request)
                    )
                    for a in admins
                ),
                return_exceptions=True,
            )
        answered = [
            (admin, reply)
            for admin, reply in zip(admins, replies, strict=True)
            if isinstance(reply, httpx.Response)
        ]
        if not answered:
            return JSONResponse({"worker": admins[0], "error": str(replies[0])}, status_code=502)
        views = [(admin, reply, _json_or_text(reply)) for admin, reply in answered]
        writers = [
            view
            for view in views
            if view[1].status_code == 200 and isinstance(view[2], dict) and view[2].get("writer")
        ]
        admin, reply, body = writers[0] if writers else views[0]
        headers = {"x-switchyard-worker": admin}
        if isinstance(body, dict):
            return JSONResponse(
                {**body, "worker": admin}, status_code=reply.status_code, headers=headers
            )
        return Response(
            reply.content,
            status_code=reply.status_code,
            media_type=reply.headers.get("content-type"),
            headers=headers,
        )

    def refused(answers: list[httpx.Response]) -> Response | None:
        if not answers:
            return JSONResponse({"error": "no worker answered"}, status_code=503)
        for reply in answers:
            if reply.status_code in (400, 401, 503):
                return Response(
                    reply.content, status_code=reply.status_code, media_type="application/json"
                )
        return None

    async def shadow_route(request: Request) -> Response:
        route = request.path_params["route"]
        query = dict(request.query_params)
        # Every worker's raw numbers; the first adds the fleet counts it reads.
        raw = {**query, "raw": "1"}
        replies = await ask(request, f"/admin/shadow/{route}", [{**raw, "fleet": "1"}, raw])
        first = replies[0] if replies else None
        if first is not None and not isinstance(first, httpx.Response):
            return JSONResponse({"error": f"worker 0: {first}"}, status_code=502)
        answers = [r for r in replies if isinstance(r, httpx.Response)]
        problem = refused(answers)
        if problem is not None:
            return problem
        views = [r.json() for r in answers if r.status_code == 200]
        merged = merge_raw(views)
        if merged is None:
            return JSONResponse({"error": f"route {route!r} has no shadows"}, status_code=404)
        fleet = views[0].get("fleet") if answers[0].status_code == 200 else None
        if request.query_params.get("raw") == "1":
            return JSONResponse({**merged, "fleet": fleet} if fleet is not None else merged)
        if fleet is None:  # the first worker has no such shadow; another one has
            return JSONResponse(
                {"error": f"worker 0 has no shadows of {route!r} yet"}, status_code=503
            )
        return JSONResponse(summarise(merged, fleet))

    own: dict[str, Handler] = {
        "metrics": metrics,
        "livez": livez,
        "readyz": readyz,
        "shadow_route": shadow_route,
    }
    handlers: dict[str, Handler] = {}
    for endpoint in served(enabled):
        if endpoint.fleet == "each":
            handlers[endpoint.name] = each
        elif endpoint.fleet == "one":
            handlers[endpoint.name] = one
        elif endpoint.fleet == "writer":
            handlers[endpoint.name] = writer_view
        elif endpoint.name in own:
            handlers[endpoint.name] = own[endpoint.name]
    # build_app refuses an `own` or `merged` endpoint that has no handler above.
    return build_app(handlers, token, enabled=enabled)
