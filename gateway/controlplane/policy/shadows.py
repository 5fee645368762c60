"""A route's `shadow` list: checked against the rest of the policy and compiled.

Shadows resolve like variants: a registry target without `endpoints` is bound by the
resolver under `binding.shadow_key(route, name)`. Unlike a variant, a shadow without a
resolution never takes its route down: its copies are skipped (and counted) until
the target resolves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import quote

from gateway.controlplane.k8s.pools import Discovered, expand_pool
from gateway.controlplane.policy.fields import split_target
from gateway.controlplane.policy.schema import RoutingPolicy
from gateway.controlplane.registry.binding import (
    Binding,
    Resolved,
    VariantKey,
    needs_of,
    shadow_key,
)
from gateway.dataplane.shadow.verdict import Tolerance
from gateway.dataplane.snapshot import Endpoint, Shadow, Timeouts
from gateway.observability.metrics import GatewayMetrics

Loc = tuple[str | int, ...]


def shadow_problems(
    policy: RoutingPolicy, registry: bool, no_registry: str
) -> list[tuple[Loc, str]]:
    """Duplicate shadow names, and registry targets nothing can resolve (no registry)."""
    out: list[tuple[Loc, str]] = []
    unresolvable = set() if registry else {n.variant for n in needs_of([policy]) if not n.static}
    seen: dict[str, int] = {}
    for i, spec in enumerate(policy.shadow):
        if spec.model_version is not None and policy.protocol != "kserve-v2":
            out.append(
                (("shadow", i, "model_version"), "model_version applies to kserve-v2 routes only")
            )
        name = spec.label
        if name in seen:
            out.append(
                (
                    (("shadow", i, "name")),
                    f"duplicate shadow name {name!r} (also shadow[{seen[name]}])",
                )
            )
        seen.setdefault(name, i)
        if shadow_key(policy.route, name)[1] in unresolvable:
            out.append((("shadow", i, "target"), no_registry))
    return out


def compile_shadows(
    policy: RoutingPolicy,
    metrics: GatewayMetrics,
    bindings: Mapping[VariantKey, Binding],
    discovered: Discovered,
    endpoint: Callable[[str], Endpoint],
) -> tuple[Shadow, ...]:
    """The route's shadows for the snapshot; `endpoint` builds one pool member."""
    out: list[Shadow] = []
    for spec in policy.shadow:
        name = spec.label
        version = ""
        if spec.target is not None:
            version = split_target(spec.target)[2] or ""
        urls: tuple[str, ...] = tuple(spec.endpoints or ())
        upstream_model = spec.model
        unavailable = None
        binding = bindings.get(shadow_key(policy.route, name))
        if isinstance(binding, Resolved):
            version, urls = binding.version, binding.endpoints
            upstream_model = binding.upstream_model or spec.model
        elif isinstance(binding, str):
            unavailable = binding
        t = spec.timeouts
        out.append(
            Shadow(
                name=name,
                sample=spec.sample,
                max_inflight=spec.max_inflight,
                max_body_bytes=spec.max_body_bytes,
                timeouts=Timeouts(
                    connect=t.connect, first_byte=t.first_byte, total=t.total, idle=t.idle
                ),
                endpoints=tuple(endpoint(url) for url in expand_pool(urls, discovered)),
                series=metrics.shadow.series(policy.route, name, version),
                version=version,
                target=spec.target,
                upstream_model=upstream_model,
                model_path=_model_path(upstream_model or policy.route, spec.model_version),
                tolerance=Tolerance(spec.tolerance, spec.min_similarity),
                unavailable=unavailable,
            )
        )
    return tuple(out)


def _model_path(model: str, version: str | None) -> bytes:
    """The KServe v2 URL segment naming the shadow's model (and version), quoted."""
    path = quote(model, safe="")
    if version:
        path += "/versions/" + quote(version, safe="")
    return path.encode()
