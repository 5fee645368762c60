"""Compile validated policies into the immutable `RuntimeSnapshot` the data plane reads.

Everything the request path would otherwise compute per request is computed here once:
cumulative weights, lower-cased header names as bytes, fallback indices, the response
header lines naming route/variant/backend, and the `/v1/models` body.

Compilation is pure except for get-or-create calls on `GatewayMetrics` and
`HealthRegistry`: those return the *same* series, endpoint states and retry budgets for
the same names, so health and counters carry over from one snapshot to the next.

Registry targets arrive already resolved (`resolved`, built by the resolver from what
the registry said), and so do `k8s://` Service pools (`discovered`, the ready pods the
EndpointSlice watch last saw): compiling never does I/O. A route with a weighted variant whose
target has no resolution compiles all the same, marked unavailable, so it answers 503
with the reason while every other route serves.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate
from urllib.parse import quote

import orjson

from gateway.controlplane.k8s.pools import Discovered, expand_pool, needs_kubernetes
from gateway.controlplane.policy.driftspec import drift_problems
from gateway.controlplane.policy.fields import split_endpoint, split_target
from gateway.controlplane.policy.flowspec import flow_gate, flow_problems
from gateway.controlplane.policy.groundtruthspec import (
    compile_ground_truth,
    ground_truth_problems,
)
from gateway.controlplane.policy.loader import (
    LoadedPolicy,
    PathsArg,
    PolicyError,
    PolicyProblem,
    PolicySource,
    collect_policies,
)
from gateway.controlplane.policy.pickerspec import PickerSpec, compile_picker, picker_problems
from gateway.controlplane.policy.rollouts import rollout_problems
from gateway.controlplane.policy.schema import HealthCheckSpec, RoutingPolicy, VariantSpec
from gateway.controlplane.policy.shadows import compile_shadows, shadow_problems
from gateway.controlplane.policy.signaturespec import signature_problems
from gateway.controlplane.registry.binding import (
    Binding,
    Refused,
    Resolved,
    VariantKey,
    needs_of,
    signature_check,
)
from gateway.dataplane.flow import FlowGate
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import (
    Endpoint,
    HealthCheck,
    OutlierPolicy,
    Override,
    RetryPolicy,
    Route,
    RuntimeSnapshot,
    Sticky,
    Timeouts,
    Variant,
)
from gateway.dataplane.translate import TRANSLATABLE
from gateway.observability.metrics import GatewayMetrics
from gateway.rollout.weights import Weights, with_weights

NO_REGISTRY = "registry targets need a registry (--registry-uri); not configured"
# Active health checks: the path each protocol's backends answer readiness on, and the
# protocols probed without a `health_check` block (model servers with a standard one).
DEFAULT_PROBE_PATH = {
    "kserve-v2": "/v2/models/{model}/ready",
    "json": "/readyz",
    "openai": "/health",
    "ollama": "/api/version",
}
PROBED_BY_DEFAULT = frozenset({"kserve-v2", "json"})
Resolutions = Mapping[VariantKey, Binding]


def as_loaded(policies: Iterable[LoadedPolicy | RoutingPolicy]) -> list[LoadedPolicy]:
    """Accept bare `RoutingPolicy` objects too (built in code, no file behind them)."""
    return [
        p if isinstance(p, LoadedPolicy) else LoadedPolicy(p, PolicySource("<memory>", i))
        for i, p in enumerate(policies)
    ]


def check_policies(
    policies: Iterable[LoadedPolicy | RoutingPolicy],
    *,
    registry: bool = False,
    file_roots: Sequence[str] | None = None,
) -> list[PolicyProblem]:
    """Problems a single document's schema cannot see: references between fields,
    weights that add up to nothing, routes defined twice, and (without a `registry`)
    targets nothing can resolve.

    With `file_roots` (possibly empty), local files a policy names (drift reference
    data, saved windows) must lie in the policy file's folder or one of those roots.
    """
    problems: list[PolicyProblem] = []
    first_seen: dict[str, PolicySource] = {}
    for loaded in as_loaded(policies):
        policy, source = loaded.policy, loaded.source
        other = first_seen.setdefault(policy.route, source)
        if other is not source:
            problems.append(
                source.problem(
                    ("route",), f"route {policy.route!r} is already defined at {other.where()}"
                )
            )
        problems.extend(_check_route(policy, source, registry))
        if policy.drift is not None:
            found = drift_problems(policy.drift, policy.protocol, source.file, file_roots)
            problems.extend(source.problem(("drift", *loc), message) for loc, message in found)
        problems.extend(source.problem(loc, message) for loc, message in rollout_problems(policy))
        load = [v.load_metrics for v in policy.variants]
        found_flow = flow_problems(policy.flow, load)
        problems.extend(source.problem(loc, message) for loc, message in found_flow)
        found_picker = picker_problems(
            policy.protocol, policy.picker, [v.picker for v in policy.variants], load
        )
        problems.extend(source.problem(loc, message) for loc, message in found_picker)
        found_shadow = shadow_problems(policy, registry, NO_REGISTRY)
        problems.extend(source.problem(loc, message) for loc, message in found_shadow)
        names = [v.name for v in policy.variants] + [s.label for s in policy.shadow]
        found_sig = signature_problems(policy.signature, policy.protocol, names)
        problems.extend(source.problem(loc, message) for loc, message in found_sig)
        found_truth = ground_truth_problems(policy.ground_truth, policy.protocol)
        problems.extend(source.problem(loc, message) for loc, message in found_truth)
    return problems


def _check_route(
    policy: RoutingPolicy, source: PolicySource, registry: bool
) -> list[PolicyProblem]:
    out: list[PolicyProblem] = []
    # Pinned versions the policy's own `backends` map serves need no registry.
    unresolvable = set() if registry else {n.variant for n in needs_of([policy]) if not n.static}
    index: dict[str, int] = {}
    for i, variant in enumerate(policy.variants):
        if variant.name in index:
            message = f"duplicate variant name (also variants[{index[variant.name]}])"
            out.append(source.problem(("variants", i, "name"), message))
        index.setdefault(variant.name, i)
        if variant.name in unresolvable:
            out.append(source.problem(("variants", i, "target"), NO_REGISTRY))
    if sum(v.weight for v in policy.variants) <= 0:
        out.append(
            source.problem(("variants",), "weights add up to 0; at least one must be above 0")
        )
    names = ", ".join(index)
    for i, override in enumerate(policy.overrides):
        if override.variant not in index:
            out.append(
                source.problem(
                    ("overrides", i, "variant"),
                    f"no variant named {override.variant!r} (variants: {names})",
                )
            )
    for i, name in enumerate(policy.fallback):
        if name not in index:
            message = f"no variant named {name!r} (variants: {names})"
            out.append(source.problem(("fallback", i), message))
        elif name in policy.fallback[:i]:
            out.append(source.problem(("fallback", i), f"variant {name!r} is listed twice"))
    if policy.outlier.max_ejection < policy.outlier.base_ejection:
        message = "must be at least base_ejection"
        out.append(source.problem(("outlier", "max_ejection"), message))
    for i, variant in enumerate(policy.variants):
        if variant.model_version is not None and policy.protocol != "kserve-v2":
            message = "model_version applies to kserve-v2 routes only"
            out.append(source.problem(("variants", i, "model_version"), message))
        if variant.grpc_port is not None and policy.protocol != "kserve-v2":
            message = "grpc_port applies to kserve-v2 routes only (gRPC speaks KServe v2)"
            out.append(source.problem(("variants", i, "grpc_port"), message))
        if variant.model is not None and policy.protocol == "json":
            message = "json routes pass the request through as it is; `model` has no effect"
            out.append(source.problem(("variants", i, "model"), message))
        backend = variant.backend_protocol
        pair = (policy.protocol, backend)
        if backend and backend != policy.protocol and pair not in TRANSLATABLE:
            message = (
                f"the gateway cannot translate {policy.protocol} clients to {backend} backends "
                "(it translates between openai and ollama)"
            )
            out.append(source.problem(("variants", i, "backend_protocol"), message))
    return out


def policy_version(policies: Iterable[LoadedPolicy | RoutingPolicy]) -> str:
    """Content hash of the effective policies (defaults filled in, file layout ignored).

    Moving a policy between files, reordering files or spelling `10s` as `10` keeps the
    hash, so a reload of such edits reports "unchanged".
    """
    docs = sorted(
        (p.policy.model_dump(mode="json", by_alias=True) for p in as_loaded(policies)),
        key=lambda d: str(d["route"]),
    )
    return hashlib.sha256(orjson.dumps(docs, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def load_checked(
    paths: PathsArg, *, registry: bool = False, file_roots: Sequence[str] | None = ()
) -> list[LoadedPolicy]:
    """Load and check policies, raising one `PolicyError` with every problem found."""
    policies, problems = collect_policies(paths)
    problems.extend(check_policies(policies, registry=registry, file_roots=file_roots))
    if problems:
        raise PolicyError(problems)
    return policies


def compile_snapshot(
    policies: Iterable[LoadedPolicy | RoutingPolicy],
    *,
    metrics: GatewayMetrics,
    health: HealthRegistry,
    created_at: float | None = None,
    resolved: Resolutions | None = None,
    discovered: Discovered | None = None,
    weights: Weights | None = None,
) -> RuntimeSnapshot:
    """Build the snapshot for `policies`; raises `PolicyError` if they do not check out.

    `resolved` holds the registry targets' bindings by (route, variant); None means no
    registry is configured, which makes targets that need one a problem. `discovered`
    holds the pods of every `k8s://` pool; None means no Kubernetes API, which makes
    such pools a problem, and a pool missing from it compiles empty (503 until pods
    are ready). `weights` overrides variant weights by (route, variant): a progressive
    rollout's current step (see `gateway.rollout.weights`); the policy hash ignores it.
    """
    loaded = as_loaded(policies)
    problems = check_policies(loaded, registry=resolved is not None)
    if discovered is None:
        problems.extend(needs_kubernetes(loaded))
    if problems:
        raise PolicyError(problems)
    created = time.time() if created_at is None else created_at
    bindings = _bindings(loaded, resolved or {})
    pods = discovered or {}
    routes = {
        p.policy.route: _route(p.policy, p.source, metrics, health, bindings, pods)
        for p in sorted(with_weights(loaded, weights), key=lambda p: p.policy.route)
    }
    sources = tuple(dict.fromkeys(p.source.file for p in loaded))
    return RuntimeSnapshot(
        routes=routes,
        version=policy_version(loaded),
        created_at=created,
        sources=sources,
        models_body=_models_body(loaded, created),
    )


def _bindings(loaded: Sequence[LoadedPolicy], resolved: Resolutions) -> dict[VariantKey, Binding]:
    out: dict[VariantKey, Binding] = {}
    for need in needs_of(loaded):
        found = resolved.get(need.key)
        if found is None and need.static:
            version = need.version or ""
            entry = need.backends[version]
            found = Resolved(version, tuple(entry.endpoints), entry.model, "backends")
        out[need.key] = found if found is not None else f"{need.target}: not resolved yet"
    return out


def _route(
    policy: RoutingPolicy,
    source: PolicySource,
    metrics: GatewayMetrics,
    health: HealthRegistry,
    bindings: Mapping[VariantKey, Binding],
    discovered: Discovered,
) -> Route:
    variants = tuple(
        _variant(
            policy.route,
            i,
            spec,
            metrics,
            health,
            bindings.get((policy.route, spec.name)),
            discovered,
            protocol=policy.protocol,
            route_check=policy.health_check,
            flow=flow_gate(policy.route, spec.name, policy.flow, health),
            picker=spec.picker or policy.picker,
            policy=policy,
        )
        for i, spec in enumerate(policy.variants)
    )
    # A weighted variant without a resolution would silently shift its share onto the
    # others (a challenger could get all traffic), so the whole route answers 503
    # instead. Weight-0 variants (override-only) do not take the route down.
    missing = [
        found
        for spec in policy.variants
        if spec.weight > 0
        and isinstance(found := bindings.get((policy.route, spec.name)), str)
        # A version refused as incompatible gets no traffic; the route serves on.
        and not isinstance(found, Refused)
    ]
    unavailable = None
    if missing:
        unavailable = f"route '{policy.route}' is unavailable: " + "; ".join(missing)
    index = {v.name: v.index for v in variants}
    sticky = None
    if policy.sticky is not None:
        key = policy.sticky.key
        key_bytes = key.encode("latin-1") if policy.sticky.source == "header" else b""
        sticky = Sticky(source=policy.sticky.source, key=key, key_bytes=key_bytes)
    overrides = tuple(
        Override(
            headers=tuple(
                (name.encode("latin-1"), value.encode()) for name, value in o.match.header.items()
            ),
            variant=index[o.variant],
        )
        for o in policy.overrides
    )
    weights = [v.weight for v in variants]
    t, r, o = policy.timeouts, policy.retries, policy.outlier
    return Route(
        name=policy.route,
        protocol=policy.protocol,
        variants=variants,
        cumulative=tuple(accumulate(weights)),
        total_weight=float(sum(weights)),
        sticky=sticky,
        overrides=overrides,
        fallback=tuple(index[name] for name in policy.fallback),
        timeouts=Timeouts(connect=t.connect, first_byte=t.first_byte, total=t.total, idle=t.idle),
        retries=RetryPolicy(
            attempts=r.attempts,
            budget=r.budget,
            min_per_second=r.min_per_second,
            on_connect_error="connect-error" in r.on,
            on_timeout="timeout" in r.on,
            on_reset="reset" in r.on,
            statuses=frozenset(s for s in r.on if isinstance(s, int)),
        ),
        outlier=OutlierPolicy(
            consecutive_failures=o.consecutive_failures,
            base_ejection=o.base_ejection,
            max_ejection=o.max_ejection,
            max_ejection_percent=o.max_ejection_percent,
        ),
        salt=policy.route.encode(),
        budget=health.budget(policy.route),
        counters=metrics.route(policy.route),
        source=source.where(),
        max_body_bytes=policy.max_body_bytes,
        unavailable=unavailable,
        shadows=compile_shadows(
            policy, metrics, bindings, discovered, lambda url: _endpoint(url, health)
        ),
        ground_truth=compile_ground_truth(policy.ground_truth, policy.protocol),
    )


def _variant(
    route: str,
    index: int,
    spec: VariantSpec,
    metrics: GatewayMetrics,
    health: HealthRegistry,
    binding: Binding | None,
    discovered: Discovered,
    *,
    protocol: str = "openai",
    route_check: HealthCheckSpec | None = None,
    flow: FlowGate | None = None,
    picker: PickerSpec | None = None,
    policy: RoutingPolicy | None = None,
) -> Variant:
    # A pinned target (models:/NAME/3) names its version without a registry; alias
    # targets get theirs from the resolver's binding.
    version = ""
    if spec.target is not None:
        version = split_target(spec.target)[2] or ""
    urls: Sequence[str] = spec.endpoints or ()
    upstream_model = spec.model
    if isinstance(binding, Resolved):
        version, urls = binding.version, binding.endpoints
        # The version's own model name wins: it moves with the alias, the policy does not.
        upstream_model = binding.upstream_model or spec.model
    endpoints = tuple(
        _endpoint(url, health, spec.grpc_port) for url in expand_pool(urls, discovered)
    )
    # KServe v2 names the backend model (and version) in the URL: quoted once, here.
    model_path = quote(upstream_model or route, safe="")
    if spec.model_version:
        model_path += "/versions/" + quote(spec.model_version, safe="")
    return Variant(
        name=spec.name,
        index=index,
        weight=0.0 if isinstance(binding, Refused) else spec.weight,
        endpoints=endpoints,
        series=tuple(metrics.series(route, spec.name, version, e.backend) for e in endpoints),
        version=version,
        upstream_model=upstream_model,
        target=spec.target,
        header_lines=tuple(header_lines(route, spec.name, version, e.backend) for e in endpoints),
        backend_protocol=spec.backend_protocol or "",
        load_metrics=spec.load_metrics or "",
        model_path=model_path.encode(),
        model_version=spec.model_version or "",
        health_check=health_check(protocol, route_check, spec.health_check, model_path),
        flow=flow,
        signature=signature_check(policy, spec.target, binding) if policy else None,
        picker=compile_picker(
            route,
            spec.name,
            picker,
            tuple(e.state for e in endpoints),
            health.pickers,
            metrics.picker,
            upstream_model or route,
        ),
    )


def health_check(
    protocol: str,
    route_spec: HealthCheckSpec | None,
    variant_spec: HealthCheckSpec | None,
    model: str,
) -> HealthCheck | None:
    """The probe of one variant's endpoints: the variant's fields over the route's, over
    the protocol's defaults; None when probing is off. `model` is the variant's
    URL-quoted backend model, NAME or NAME/versions/VERSION."""
    if route_spec is None and variant_spec is None and protocol not in PROBED_BY_DEFAULT:
        return None
    values = HealthCheckSpec().model_dump()
    for spec in (route_spec, variant_spec):
        if spec is not None:
            values.update({name: getattr(spec, name) for name in spec.model_fields_set})
    if not values["enabled"]:
        return None
    path = values["path"] or DEFAULT_PROBE_PATH[protocol]
    return HealthCheck(
        path=path.replace("{model}", model),
        interval=values["interval"],
        timeout=values["timeout"],
        unhealthy_after=values["unhealthy_after"],
        healthy_after=values["healthy_after"],
    )


def _endpoint(url: str, health: HealthRegistry, grpc_port: int | None = None) -> Endpoint:
    host, port, base_path = split_endpoint(url)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    grpc_target = ""
    if grpc_port is not None:
        grpc_target = f"[{host}]:{grpc_port}" if ":" in host else f"{host}:{grpc_port}"
    return Endpoint(
        url=url,
        host=host,
        port=port,
        base_path=base_path,
        backend=authority,
        host_header=authority.encode(),
        state=health.endpoint(authority),
        grpc_target=grpc_target,
    )


def header_lines(route: str, variant: str, version: str, backend: str) -> bytes:
    """The response header lines that tell a client who served it."""
    lines = (
        f"x-switchyard-route: {route}\r\n"
        f"x-switchyard-variant: {variant}\r\n"
        f"x-switchyard-backend: {backend}\r\n"
    )
    if version:
        lines += f"x-switchyard-version: {version}\r\n"
    return lines.encode("latin-1")


def _models_body(policies: Sequence[LoadedPolicy], created_at: float) -> bytes:
    data = [
        {"id": route, "object": "model", "created": int(created_at), "owned_by": "switchyard"}
        for route in sorted(p.policy.route for p in policies if p.policy.protocol == "openai")
    ]
    return orjson.dumps({"object": "list", "data": data})
