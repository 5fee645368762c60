"""Every admin endpoint, declared once, and the one factory that serves them.

A gateway process answers each endpoint itself (`gateway.admin.app`); the supervisor of
`--workers N` answers the same table from its workers (`gateway.admin.fleet`), as each
entry's `fleet` says. Both build their Starlette app with `build_app`, which refuses a
handler the table does not name and a table entry without a handler, so the two modes
serve the same paths, methods and token checks by construction.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]
# open: probes and Prometheus; token: the bearer token when one is set; signed: the
# registry webhook, authenticated by its HMAC signature (MLflow cannot send a token).
Access = Literal["open", "token", "signed"]
# How the supervisor of `--workers N` answers: `own` from its own state, `merged` from
# every worker's answer combined, `each` passed to every worker (each must hear it),
# `one` passed to one worker (any worker can answer it), `writer` asked of every worker
# and answered by the rollout writer's view (only it keeps the last analysis).
Fleet = Literal["own", "merged", "each", "one", "writer"]
# Endpoints a process serves only when it has the part behind them.
Feature = Literal["drift", "rollouts"]


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    methods: tuple[str, ...] = ("GET",)
    access: Access = "token"
    fleet: Fleet = "one"
    feature: Feature | None = None


# In matching order: a longer path before the `{route:path}` that would swallow it.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("metrics", "/metrics", access="open", fleet="merged"),
    Endpoint("livez", "/livez", access="open", fleet="own"),
    Endpoint("readyz", "/readyz", access="open", fleet="own"),
    # The query too: `POST /admin/reload?remove=ROUTE` confirms on every worker.
    Endpoint("reload", "/admin/reload", ("POST",), fleet="each"),
    Endpoint("reload_status", "/admin/reload"),
    Endpoint("snapshot", "/admin/snapshot"),
    Endpoint("routes", "/admin/routes"),
    Endpoint("explain", "/admin/explain", ("POST",)),
    # Every worker resolves aliases itself: each must hear that one moved.
    Endpoint("registry_webhook", "/admin/registry/webhook", ("POST",), "signed", "each"),
    Endpoint("drift", "/admin/drift", feature="drift"),
    Endpoint("drift_report", "/admin/drift/{route:path}/report.html", feature="drift"),
    Endpoint("drift_route", "/admin/drift/{route:path}", feature="drift"),
    # Counts from the statistics source (any worker reads all); the route's view also
    # merges every worker's kept comparisons.
    Endpoint("shadow", "/admin/shadow"),
    Endpoint("shadow_route", "/admin/shadow/{route:path}", fleet="merged"),
    Endpoint("rollouts", "/admin/rollouts", fleet="writer", feature="rollouts"),
    Endpoint(
        "rollout_command",
        "/admin/rollouts/{route:path}/{action:str}",
        ("POST",),
        feature="rollouts",
    ),
    Endpoint("rollout", "/admin/rollouts/{route:path}", fleet="writer", feature="rollouts"),
    Endpoint("experiments", "/admin/experiments", feature="rollouts"),
    Endpoint("experiment", "/admin/experiments/{route:path}", feature="rollouts"),
    # Counts from the statistics source (any worker reads all).
    Endpoint("ground_truth", "/admin/ground-truth/{route:path}"),
    # API keys, their limits and usage: the fleet's from the quota store (any worker).
    Endpoint("keys", "/admin/keys"),
    Endpoint("key", "/admin/keys/{name:str}"),
)


def features(*, drift_dir: str | None, rollouts: bool) -> frozenset[Feature]:
    """The optional endpoint groups of a process with these parts."""
    found: set[Feature] = set()
    if drift_dir:
        found.add("drift")
    if rollouts:
        found.add("rollouts")
    return frozenset(found)


def served(enabled: Collection[Feature]) -> list[Endpoint]:
    """The endpoints of a process with the `enabled` features, in matching order."""
    return [e for e in ENDPOINTS if e.feature is None or e.feature in enabled]


def bearer(token: str | None) -> Callable[[Handler], Handler]:
    """Wrap a handler so that it needs `Authorization: Bearer <token>` (if a token is set).

    The comparison takes constant time; a refusal is a 401 with `WWW-Authenticate`.
    """

    def guarded(handler: Handler) -> Handler:
        if token is None:
            return handler

        async def check(request: Request) -> Response:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse(
                    {"error": "admin API requires 'Authorization: Bearer <token>'"},
                    status_code=401,
                    headers={"www-authenticate": "Bearer"},
                )
            return await handler(request)

        return check

    return guarded


def admin_routes(handlers: Mapping[str, Handler], token: str | None) -> list[Route]:
    """Routes for the endpoints that `handlers` answers, in table order, token-checked
    where the table says."""
    unknown = sorted(set(handlers) - {e.name for e in ENDPOINTS})
    if unknown:
        raise ValueError(f"no admin endpoint is named {unknown[0]!r}")
    guarded = bearer(token)
    return [
        Route(
            e.path,
            guarded(handlers[e.name]) if e.access == "token" else handlers[e.name],
            methods=list(e.methods),
            name=e.name,
        )
        for e in ENDPOINTS
        if e.name in handlers
    ]


def build_app(
    handlers: Mapping[str, Handler], token: str | None, *, enabled: Collection[Feature]
) -> Starlette:
    """The admin ASGI app: every endpoint served with `enabled`, each by its handler."""
    routes = admin_routes(handlers, token)
    missing = [e.name for e in served(enabled) if e.name not in handlers]
    if missing:
        raise ValueError(f"admin endpoint {missing[0]!r} has no handler")
    extra = sorted(set(handlers) - {e.name for e in served(enabled)})
    if extra:
        raise ValueError(f"admin endpoint {extra[0]!r} is not served here")
    return Starlette(routes=routes)
