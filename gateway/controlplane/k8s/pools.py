"""`k8s://` pools in policies: which Services they name, and how a pool expands.

Pure functions: the EndpointSlice watch (`discovery.py`) supplies what is ready, and
compiling turns a pool into one endpoint per ready pod, so picking, outlier ejection
and the in-flight metric all work per pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gateway.controlplane.policy.fields import is_service_url
from gateway.controlplane.policy.loader import LoadedPolicy, PolicyProblem, PolicySource
from gateway.controlplane.policy.schema import RoutingPolicy

NO_KUBERNETES = "k8s:// endpoints need the Kubernetes API (run in a cluster, or pass --kubeconfig)"
# k8s://namespace/service:port -> http:// URLs of the Service's ready pods, right now.
Discovered = Mapping[str, Sequence[str]]


def _loaded(policies: Iterable[LoadedPolicy | RoutingPolicy]) -> list[LoadedPolicy]:
    return [
        p if isinstance(p, LoadedPolicy) else LoadedPolicy(p, PolicySource("<memory>", i))
        for i, p in enumerate(policies)
    ]


def service_pools(policies: Iterable[LoadedPolicy | RoutingPolicy]) -> set[str]:
    """Every `k8s://` pool the policies name, in variants, shadows and `backends`."""
    out: set[str] = set()
    for loaded in _loaded(policies):
        policy = loaded.policy
        for spec in policy.variants:
            out.update(u for u in spec.endpoints or () if is_service_url(u))
        for backend in policy.backends.values():
            out.update(u for u in backend.endpoints if is_service_url(u))
        for shadow in policy.shadow:
            out.update(u for u in shadow.endpoints or () if is_service_url(u))
    return out


def needs_kubernetes(
    loaded: Sequence[LoadedPolicy], reason: str = NO_KUBERNETES
) -> list[PolicyProblem]:
    """One problem per `k8s://` endpoint, for a process without the Kubernetes API."""
    problems = []
    for p in loaded:
        for i, spec in enumerate(p.policy.variants):
            for j, url in enumerate(spec.endpoints or ()):
                if is_service_url(url):
                    loc: tuple[str | int, ...] = ("variants", i, "endpoints", j)
                    problems.append(p.source.problem(loc, f"{url}: {reason}"))
        for key, backend in p.policy.backends.items():
            for j, url in enumerate(backend.endpoints):
                if is_service_url(url):
                    loc = ("backends", key, "endpoints", j)
                    problems.append(p.source.problem(loc, f"{url}: {reason}"))
        for i, shadow in enumerate(p.policy.shadow):
            for j, url in enumerate(shadow.endpoints or ()):
                if is_service_url(url):
                    loc = ("shadow", i, "endpoints", j)
                    problems.append(p.source.problem(loc, f"{url}: {reason}"))
    return problems


def expand_pool(urls: Iterable[str], discovered: Discovered) -> list[str]:
    """A pool's http:// URLs: `k8s://` entries replaced by their ready pods, no repeats."""
    out: dict[str, None] = {}
    for url in urls:
        if is_service_url(url):
            out.update(dict.fromkeys(discovered.get(url, ())))
        else:
            out[url] = None
    return list(out)
