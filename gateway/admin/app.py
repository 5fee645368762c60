"""The admin API of one gateway process, answered from its own state.

Off the request path by design: the data plane never passes through here. Everything
that changes state (reload) or reveals internals requires the bearer token when one is
configured; `/metrics`, `/livez` and `/readyz` stay open for probes and Prometheus.
Which endpoints there are, their methods and token checks: the table in
`gateway.admin.endpoints`, which the supervisor of `--workers N` serves too.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.admin.drift import drift_handlers
from gateway.admin.endpoints import Handler, build_app, features
from gateway.admin.ground_truth import ground_truth_handlers
from gateway.admin.keys import key_handlers
from gateway.admin.probes import ProbeReply, Probes
from gateway.admin.rollouts import rollout_handlers
from gateway.admin.shadow import shadow_handlers
from gateway.admin.views import reload_status_view, reload_view, routes_view, snapshot_view
from gateway.controlplane.policy.diff import ALL_ROUTES
from gateway.controlplane.policy.explain import explain
from gateway.controlplane.policy.reload import PolicyReloader
from gateway.controlplane.registry.webhook import WebhookRejected, verify
from gateway.dataplane.decide import RequestHead
from gateway.dataplane.plane import DataPlane
from gateway.errors import UnknownRoute
from gateway.rollout.controller import RolloutController
from gateway.stats.sources import LocalSource

log = logging.getLogger("switchyard.admin")


def build_admin_app(
    plane: DataPlane,
    reloader: PolicyReloader,
    token: str | None,
    *,
    webhook_secret: str | None = None,
    drift_dir: str | None = None,
    rollouts: RolloutController | None = None,
) -> Starlette:
    """The admin ASGI app for one gateway process.

    The registry webhook is not behind the bearer token (MLflow cannot send one); its
    HMAC signature with `webhook_secret` authenticates it instead.
    """
    # Where counts for experiments, shadows and rollout gates come from (gateway.stats).
    source = rollouts.stats if rollouts is not None else LocalSource(plane.metrics)
    # The open endpoints answer as the admin listener answers them before this app loads.
    probes = Probes(plane)

    async def metrics(request: Request) -> Response:
        return _reply(probes.metrics(request.headers.get("accept", "")))

    async def livez(_: Request) -> Response:
        return _reply(probes.livez())

    async def readyz(_: Request) -> Response:
        return _reply(probes.readyz())

    async def reload(request: Request) -> Response:
        confirm, error = _removals_asked(request, plane.ref.current.routes)
        if error is not None:
            return JSONResponse({"error": error}, status_code=400)
        reason = "admin" if not confirm else f"admin, remove={','.join(sorted(confirm))}"
        result = await reloader.reload(plane.ref, reason, confirm=confirm)
        # 409: the source holds a change that needs confirming (`?remove=`), not an error.
        status = {"rejected": 422, "held": 409}.get(result.outcome, 200)
        return JSONResponse(reload_view(result), status_code=status)

    async def reload_status(_: Request) -> Response:
        return JSONResponse(reload_status_view(plane.ref.current, reloader))

    async def snapshot(_: Request) -> Response:
        return JSONResponse(snapshot_view(plane.ref.current))

    async def routes(_: Request) -> Response:
        view = routes_view(plane.ref.current, plane.pool.stats(), reloader.registry_view())
        return JSONResponse(view)

    async def registry_webhook(request: Request) -> Response:
        if webhook_secret is None or reloader.resolver is None:
            return JSONResponse(
                {
                    "error": "registry webhooks need --registry-uri and "
                    "SWITCHYARD_REGISTRY_WEBHOOK_SECRET"
                },
                status_code=404,
            )
        body = await request.body()
        try:
            event = verify(webhook_secret, request.headers, body, time.time())
        except WebhookRejected as exc:
            log.warning("registry webhook rejected: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=401)
        if event.moves_alias:
            log.info(
                "registry webhook: %s.%s %s@%s; re-resolving now",
                event.entity,
                event.action,
                event.model,
                event.alias,
            )
            reloader.resolver.poke()
        return JSONResponse({"accepted": event.moves_alias})

    async def explain_view(request: Request) -> Response:
        try:
            payload: Any = await request.json()
        except ValueError:
            return JSONResponse({"error": "body must be JSON: {route, headers?, body?}"}, 400)
        if not isinstance(payload, dict) or not isinstance(payload.get("route"), str):
            return JSONResponse({"error": "'route' (string) is required"}, status_code=400)
        raw_headers = payload.get("headers") or {}
        body = payload.get("body")
        if not isinstance(raw_headers, dict) or (body is not None and not isinstance(body, dict)):
            return JSONResponse(
                {"error": "'headers' must be an object of strings, 'body' an object"}, 400
            )
        headers = [(str(k).lower().encode(), str(v).encode()) for k, v in raw_headers.items()]
        head = RequestHead(payload["route"], headers, body)
        tracked = rollouts is not None and rollouts.tracks(payload["route"])
        statistics = source.view() if tracked else None
        try:
            result = explain(
                plane.ref.current, head, random.Random(payload.get("seed")), statistics=statistics
            )
        except UnknownRoute as exc:
            return JSONResponse({"error": exc.message}, status_code=404)
        return JSONResponse(result)

    handlers: dict[str, Handler] = {
        "metrics": metrics,
        "livez": livez,
        "readyz": readyz,
        "reload": reload,
        "reload_status": reload_status,
        "snapshot": snapshot,
        "routes": routes,
        "explain": explain_view,
        "registry_webhook": registry_webhook,
        **(drift_handlers(drift_dir, plane.metrics.drift) if drift_dir else {}),
        **shadow_handlers(lambda: plane.ref.current, plane.metrics.shadow, source),
        **(rollout_handlers(rollouts) if rollouts is not None else {}),
        **key_handlers(lambda: plane.auth),
        **ground_truth_handlers(lambda: plane.ref.current, source),
    }
    enabled = features(drift_dir=drift_dir, rollouts=rollouts is not None)
    return build_app(handlers, token, enabled=enabled)


def _reply(reply: ProbeReply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.content_type)


def _removals_asked(
    request: Request, serving: Collection[str]
) -> tuple[frozenset[str], str | None]:
    """The routes `POST /admin/reload?remove=a,b` confirms removing, or an error.

    Only serving routes can be confirmed: a misspelt name must not read as consent.
    """
    unknown = sorted(set(request.query_params) - {"remove"})
    if unknown:
        return frozenset(), f"unknown query parameter {unknown[0]!r} (allowed: remove)"
    names: set[str] = set()
    for value in request.query_params.getlist("remove"):
        parts = [part.strip() for part in value.split(",")]
        if not all(parts):
            return frozenset(), f"remove={value!r}: expected ROUTE[,ROUTE...] or *"
        names.update(parts)
    strangers = sorted(names - set(serving) - {ALL_ROUTES})
    if strangers:
        shown = ", ".join(sorted(serving)) or "none"
        return frozenset(), f"remove={strangers[0]}: no such route is serving (serving: {shown})"
    return frozenset(names), None
