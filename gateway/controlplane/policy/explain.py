"""Why a request would go where it goes: `decide` plus the reasoning, as plain data.

Used by `switchyard policy explain` and the admin API. It runs the real `decide` on the
real snapshot, so the answer cannot disagree with what the data plane does; it only adds
what `decide` knows but does not return (the sticky key's point on the weight line, the
random draw, which override headers matched), and, for a route with an experiment or
rollout, where its statistics come from (`gateway.stats`: this process, the supervisor's
merged workers, or Prometheus over every replica).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.controlplane.policy.rollouts import tracks_feedback
from gateway.controlplane.policy.schema import RoutingPolicy
from gateway.dataplane.decide import RequestHead, decide, header_value, sticky_point
from gateway.dataplane.flow import priority_name
from gateway.dataplane.kserve import check_infer_request
from gateway.dataplane.session_tokens import SESSION_HEADER
from gateway.dataplane.snapshot import Route, RuntimeSnapshot, Variant
from gateway.errors import GatewayError
from gateway.settings import Settings
from gateway.stats.sources import describe_settings


class _RecordingRandom(random.Random):
    """Passes draws through from another generator and remembers them.

    Only `random()` is forwarded, the one method `decide` draws with.
    """

    def __init__(self, source: random.Random) -> None:
        super().__init__(0)
        self._source = source
        self.draws: list[float] = []

    def random(self) -> float:
        value = self._source.random()
        self.draws.append(value)
        return value


def statistics_for(policy: RoutingPolicy | None, settings: Settings) -> dict[str, Any] | None:
    """Where a gateway started with `settings` reads the statistics of `policy`'s
    experiment or rollout; None for a route with neither (or no policy)."""
    if policy is None or not tracks_feedback(policy):
        return None
    return describe_settings(settings)


def explain(
    snapshot: RuntimeSnapshot,
    head: RequestHead,
    rng: random.Random,
    *,
    now: float | None = None,
    statistics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """How `decide` routes `head`, as JSON-ready data.

    `now` is on the health registry's clock (monotonic by default) and decides which
    endpoints count as ejected. `statistics` (`StatsSource.view`, `statistics_for`) says
    where the route's experiment or rollout statistics come from. Raises `UnknownRoute`
    like `decide`.
    """
    result = _explain(snapshot, head, rng, now)
    if statistics is not None:
        result["statistics"] = dict(statistics)
    return result


def _explain(
    snapshot: RuntimeSnapshot, head: RequestHead, rng: random.Random, now: float | None
) -> dict[str, Any]:
    route = snapshot.routes.get(head.route)
    if route is not None and route.unavailable is not None:
        return _unavailable(snapshot, route)
    tape = _RecordingRandom(rng)
    decision = decide(snapshot, head, tape)
    route, chosen = decision.route, decision.variant
    at = time.monotonic() if now is None else now
    result: dict[str, Any] = {
        "route": route.name,
        "protocol": route.protocol,
        "snapshot": snapshot.version,
        "source": route.source,
        "variant": chosen.name,
        "version": chosen.version,
        "target": chosen.target,
        "upstream_model": chosen.upstream_model,
        "reason": decision.reason,
        "detail": "",
        "weights": _weights(route),
        "endpoints": _endpoints(chosen, at),
        "resolution": _resolution(chosen),
        "fallback": [route.variants[i].name for i in route.fallback],
        "order": [v.name for v in decision.order],
    }
    if chosen.flow is not None:
        result["flow"] = _flow(chosen, head)
    if chosen.picker is not None:
        result["picker"] = _picker(chosen, head, at)
    if chosen.signature is not None:
        result["signature"] = _signature(chosen, head)
    if decision.reason == "override":
        index, matched = _matched_override(route, head, chosen)
        shown = ", ".join(f"{k}={v}" for k, v in matched.items())
        result["override"] = {"index": index, "headers": matched}
        result["detail"] = f"overrides[{index}] matched {shown}"
    elif decision.reason == "sticky" and route.sticky and decision.sticky_key is not None:
        point = sticky_point(route, decision.sticky_key)
        result["sticky"] = {
            "source": route.sticky.source,
            "key": route.sticky.key,
            "value": decision.sticky_key,
            "point": point,
        }
        landing = _landing(route, chosen, point)
        result["detail"] = f"{_sticky_name(route)}={decision.sticky_key!r} hashes to {landing}"
    elif decision.reason == "weighted":
        missing = f"no {_sticky_name(route)} in the request; " if route.sticky else ""
        if len(tape.draws) == 1:
            point = tape.draws[0] * route.total_weight
            result["draw"] = point
            result["detail"] = f"{missing}random draw {_landing(route, chosen, point)}"
        else:
            result["detail"] = f"{missing}random draw by weight"
    else:
        result["detail"] = "the route has one variant"
    return result


def _unavailable(snapshot: RuntimeSnapshot, route: Route) -> dict[str, Any]:
    assert route.unavailable is not None
    return {
        "route": route.name,
        "protocol": route.protocol,
        "snapshot": snapshot.version,
        "source": route.source,
        "variant": None,
        "version": "",
        "target": None,
        "upstream_model": None,
        "reason": "unavailable",
        "detail": route.unavailable,
        "weights": _weights(route),
        "endpoints": [],
        "resolution": None,
        "fallback": [route.variants[i].name for i in route.fallback],
        "order": [],
    }


def _signature(variant: Variant, head: RequestHead) -> dict[str, Any]:
    """The signature requests to this variant are checked against, and whether the
    explained body (if any) fits it, or the 400 it would get."""
    check = variant.signature
    assert check is not None
    view: dict[str, Any] = {"of": check.where, "inputs": check.signature.describe()}
    if head.body is None:
        view["request"] = None
        return view
    try:
        if check.protocol == "kserve-v2":
            check_infer_request(dict(head.body))  # what the front checks first
        check.check(head.body)
        view["request"] = "fits"
    except GatewayError as err:
        view["request"] = err.message
    return view


def _flow(variant: Variant, head: RequestHead) -> dict[str, Any]:
    """The pool's flow control: its limits, who waits now, and this request's priority
    as the gateway would see it without an API key (a key brings its own)."""
    gate = variant.flow
    assert gate is not None
    view = gate.describe()
    fields = dict(head.fields) if head.fields is not None else dict(head.headers)
    try:
        level, _ = gate.identify(fields, -1, "")
        view["priority"] = priority_name(level)
    except GatewayError as err:
        view["priority"] = None
        view["priority_problem"] = err.message
    return view


def _picker(variant: Variant, head: RequestHead, now: float) -> dict[str, Any]:
    """The pool's scored picker: its settings, and for this request (the body as JSON)
    each endpoint's scores now, or the 400 a request no endpoint fits gets. Nothing is
    recorded or counted."""
    picker = variant.picker
    assert picker is not None
    view = picker.describe()
    body = orjson.dumps(head.body) if head.body is not None else b""
    fields = dict(head.fields) if head.fields is not None else dict(head.headers)
    ask = picker.ask(body, head.body, fields)
    if picker.session_issue:
        # Unverified here (explain holds no fleet secret): the serving gateway checks it.
        ask.session = fields.get(SESSION_HEADER, b"")
    view["request"] = {
        "prefix_blocks": len(ask.hashes),
        "session": ask.session.decode("utf-8", "replace") or None,
        "max_tokens": ask.max_tokens,
    }
    if picker.session_issue and not ask.session:
        view["request"]["session_issued"] = "none sent: the gateway issues a new token"
    try:
        picker.check_fit(ask, head.body, count=False)
    except GatewayError as err:
        view["refused"] = err.message
        return view
    if ask.exact:
        view["request"]["prompt_tokens"] = ask.tokens
    rows = picker.explain(ask, now)
    for row, endpoint in zip(rows, variant.endpoints, strict=True):
        row["url"] = endpoint.url
    totals = [row["total"] for row in rows if row["candidate"]]
    best = max(totals) if totals else None
    for row in rows:
        row["best"] = row["candidate"] and row["total"] == best
    view["endpoints"] = rows
    return view


def _resolution(variant: Variant) -> str | None:
    """`models:/chat@champion -> version 2 -> http://...`: how a registry target resolved."""
    if variant.target is None:
        return None
    urls = ", ".join(e.url for e in variant.endpoints) or "no endpoints"
    return f"{variant.target} -> version {variant.version or '?'} -> {urls}"


def _sticky_name(route: Route) -> str:
    sticky = route.sticky
    return f"{sticky.source}:{sticky.key}" if sticky else ""


def _landing(route: Route, chosen: Variant, point: float) -> str:
    end = route.cumulative[chosen.index]
    start = end - chosen.weight
    return (
        f"{point:.3f} on [0, {_num(route.total_weight)}), "
        f"in {chosen.name}'s band [{_num(start)}, {_num(end)})"
    )


def _weights(route: Route) -> list[dict[str, Any]]:
    out = []
    start = 0.0
    for variant, end in zip(route.variants, route.cumulative, strict=True):
        out.append(
            {
                "variant": variant.name,
                "weight": variant.weight,
                "share": variant.weight / route.total_weight if route.total_weight else 0.0,
                "band": [start, end],
            }
        )
        start = end
    return out


def _endpoints(variant: Variant, now: float) -> list[dict[str, Any]]:
    # The order the data plane tries them: available first, then fewest in flight.
    ordered = sorted(
        variant.endpoints,
        key=lambda e: (not e.state.available(now), e.state.in_flight),
    )
    return [
        {
            "url": e.url,
            "backend": e.backend,
            "available": e.state.available(now),
            "in_flight": e.state.in_flight,
            "ejections": e.state.ejections,
        }
        for e in ordered
    ]


def _matched_override(
    route: Route, head: RequestHead, chosen: Variant
) -> tuple[int, dict[str, str]]:
    for index, override in enumerate(route.overrides):
        if override.variant == chosen.index and all(
            header_value(head.headers, name) == value for name, value in override.headers
        ):
            return index, {
                name.decode("latin-1"): value.decode("utf-8", "replace")
                for name, value in override.headers
            }
    return -1, {}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def render_text(result: dict[str, Any]) -> str:
    """`explain`'s result for a terminal."""
    weights = ", ".join(
        f"{w['variant']} {_num(w['weight'])} ({w['share']:.1%}) "
        f"[{_num(w['band'][0])}, {_num(w['band'][1])})"
        for w in result["weights"]
    )
    lines = [
        f"route:     {result['route']} ({result['protocol']}), snapshot {result['snapshot']}",
        f"variant:   {result['variant'] or 'none'}"
        + (f" (version {result['version']})" if result["version"] else ""),
        f"reason:    {result['reason']} - {result['detail']}",
        f"weights:   {weights}",
    ]
    if result.get("resolution"):
        lines.append(f"registry:  {result['resolution']}")
    for i, e in enumerate(result["endpoints"]):
        state = "available" if e["available"] else "ejected"
        label = "endpoints:" if i == 0 else ""
        lines.append(f"{label:<11}{e['url']} ({state}, {e['in_flight']} in flight)")
    flow = result.get("flow")
    if flow:
        limits = ", ".join(f"{k} {v}" for k, v in flow["max_in_flight"].items())
        cap = f"in flight per endpoint from priority: {limits}" if limits else "no in-flight cap"
        if flow.get("max_backend_queue"):
            cap += f"; full at {flow['max_backend_queue']} waiting on the backend"
        waiting = ", ".join(f"{k} {v}" for k, v in flow["waiting"].items()) or "none"
        lines.append(
            f"flow:      {cap}; queue {flow['max_queue']}, timeout {flow['queue_timeout']:g}s; "
            f"waiting now: {waiting}"
        )
        lines.append(
            f"priority:  {flow['priority'] or flow.get('priority_problem')} (without a key; "
            f"default {flow['default_priority']})"
        )
    picker = result.get("picker")
    if picker:
        lines.extend(_picker_lines(picker))
    signature = result.get("signature")
    if signature:
        lines.append(f"signature: {signature['inputs']} ({signature['of']})")
        if signature["request"] is not None:
            lines.append(f"request:   {signature['request']}")
    lines.append(f"fallback:  {', '.join(result['fallback']) or 'none'}")
    lines.append(f"order:     {' -> '.join(result['order'])}")
    statistics = result.get("statistics")
    if statistics:
        at = f" at {statistics['url']}" if statistics.get("url") else ""
        lines.append(
            f"stats:     experiment and rollout counts from {statistics['kind']}{at}: "
            f"{statistics['covers']}"
        )
    return "\n".join(lines) + "\n"


def _picker_lines(picker: dict[str, Any]) -> list[str]:
    """`picker:` and `scores:` lines of the text explanation."""
    weights = ", ".join(f"{name} {weight:g}" for name, weight in picker["scorers"].items())
    context = picker["context"]
    if not context["fit"]:
        fit = "no context fit"
    elif context["max_model_len"]:
        fit = f"context fit, max_model_len {context['max_model_len']}"
    else:
        fit = "context fit, max_model_len from /v1/models"
    lines = [f"picker:    {weights}; spread_above {picker['spread_above']}; {fit}"]
    if picker.get("session"):
        session = picker["session"]
        lines.append(f"session:   key {session['key']}, ttl {session['ttl']:g}s")
    if picker.get("lora"):
        lines.append(f"lora:      adapter {picker['lora']['adapter']}")
    if picker.get("refused"):
        lines.append(f"refused:   400 {picker['refused']}")
        return lines
    for i, row in enumerate(picker.get("endpoints", [])):
        label = "scores:" if i == 0 else ""
        if not row["candidate"]:
            lines.append(f"{label:<11}{row['url']} skipped: {row['skipped']}")
            continue
        parts = ", ".join(f"{k} {v:g}" for k, v in row["scores"].items() if v)
        if "lora" in row:  # what the endpoint reports of the adapter: running, free, ...
            parts = f"{parts or 'all 0'}; adapter {row['lora']['adapter']}"
        mark = " <- best" if row["best"] else ""
        lines.append(f"{label:<11}{row['url']} {row['total']:g} ({parts or 'all 0'}){mark}")
    return lines
