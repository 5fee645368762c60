"""`GET /admin/keys` and `GET /admin/keys/{name}`: API keys, their limits and usage.

For every key (by name; never the key itself): tenant, priority, rate bucket, and each
limit that applies to it (its own and its tenant's) with what the current window,
UTC day or month has used, what remains, when it resets, and this process's lease.
With a quota store the usage is the fleet's, read from Redis at the time of the call
(so any worker of `--workers N` answers for all: the endpoint's `fleet` is `one`);
without one it is this process's. The store's health comes along.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.admin.endpoints import Handler
from gateway.dataplane.auth import ApiKeys
from gateway.dataplane.quota import DAY, KIND_NAMES, RPM, TPM, KeyState, Meter, Quotas
from gateway.observability.quota_metrics import PICO
from gateway.quota.sync import QuotaSync

_NO_KEYS = "this gateway checks no API keys (start it with --api-keys FILE)"


def key_handlers(checker: Callable[[], ApiKeys | None]) -> dict[str, Handler]:
    """The two handlers; `checker` gives the process's key checker (None: no keys)."""

    async def keys(_: Request) -> Response:
        auth = checker()
        if auth is None:
            return JSONResponse({"error": _NO_KEYS}, status_code=404)
        states = sorted(auth.keys.values(), key=lambda k: k.name)
        used = await _fleet_used(auth.quotas, [m for k in states for m in k.meters])
        return JSONResponse(
            {
                "store": store_view(auth.quotas),
                "file": {"path": str(auth.path), "problem": auth.problem or None},
                "keys": [key_view(auth.quotas, k, used) for k in states],
            }
        )

    async def key(request: Request) -> Response:
        auth = checker()
        if auth is None:
            return JSONResponse({"error": _NO_KEYS}, status_code=404)
        name = request.path_params["name"]
        state = auth.by_name(name)
        if state is None:
            return JSONResponse({"error": f"no API key is named {name!r}"}, status_code=404)
        used = await _fleet_used(auth.quotas, list(state.meters))
        return JSONResponse(
            {"store": store_view(auth.quotas), **key_view(auth.quotas, state, used)}
        )

    return {"keys": keys, "key": key}


async def _fleet_used(quotas: Quotas, meters: list[Meter]) -> dict[str, int] | None:
    link = quotas.link
    if not isinstance(link, QuotaSync) or not meters:
        return None
    unique = list({m.ident: m for m in meters}.values())
    return await link.fleet_used(unique)


def store_view(quotas: Quotas) -> dict[str, Any]:
    link = quotas.link
    if isinstance(link, QuotaSync):
        return link.view()
    return {"kind": "none", "up": True, "note": "each process enforces every limit itself"}


def key_view(quotas: Quotas, key: KeyState, fleet: dict[str, int] | None) -> dict[str, Any]:
    usage = [
        {
            "route": s.route,
            "version": s.version,
            "requests": s.requests,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "cost_usd": s.cost / PICO,
        }
        for s in list(quotas.metrics.usage.values())
        if s.key == key.name
    ]
    return {
        "name": key.name,
        "tenant": key.tenant or None,
        "priority": key.priority,
        "rate": key.rate,
        "burst": key.burst,
        "limits": [meter_view(quotas, m, fleet) for m in key.meters],
        "usage_here_since_start": usage,
    }


def meter_view(quotas: Quotas, m: Meter, fleet: dict[str, int] | None) -> dict[str, Any]:
    wall = time.time()
    if wall >= m.ends_at:
        m.roll(wall)
    if fleet is not None and m.ident in fleet:
        used = fleet[m.ident] + m.spent - m.reported
        source = "fleet"
    else:
        used = quotas.used(m)
        source = "fleet (last lease batch)" if quotas.fleet else "this process"
    budget = m.kind >= DAY
    scale = PICO if budget else 1

    def shown(units: int) -> float | int:
        return units / scale if budget else units

    view: dict[str, Any] = {
        "owner": m.owner_kind,
        "name": m.owner,
        "route": m.route,
        "limit": KIND_NAMES[m.kind],
        "max": shown(m.limit),
        "unit": "requests" if m.kind == RPM else "tokens" if m.kind == TPM else "USD",
        "used": shown(used),
        "remaining": shown(max(0, m.limit - used)),
        "used_from": source,
        "resets_in_s": max(0, math.ceil(m.ends_at - wall)),
    }
    if budget:
        view["period"] = "UTC day" if m.kind == DAY else "UTC month"
    else:
        view["window_s"] = m.window
    view["here"] = {
        "spent": shown(m.spent),
        "granted": shown(m.granted) if quotas.fleet else None,
        "lease": shown(m.granted - m.spent) if quotas.fleet else None,
        "dry": m.dry if quotas.fleet else None,
        "rate_per_s": round(m.rate / scale, 9),
    }
    return view
