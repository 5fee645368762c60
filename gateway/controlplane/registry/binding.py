"""Bind a registry target to serving endpoints: pure functions, no I/O.

A variant with `target: models:/NAME@ALIAS` and no `endpoints` needs three facts to
serve: which version the alias points at (the registry), and where that version is
served and in which protocol. The last two come from the policy's `backends` map
(keyed `NAME/VERSION`, which wins: the SRE who wrote it meant it) or from the
version's tags in the registry:

- `switchyard.endpoint`: comma-separated http:// URLs of the pool serving the version
- `switchyard.protocol`: the protocol the backend speaks; must be the variant's
  `backend_protocol` if it has one (the gateway translates), else the route's protocol
- `switchyard.model`: the model name the backend expects (optional)
- `switchyard.semver`: the version's semantic version, whose MAJOR changes with an
  incompatible input schema (`gateway.controlplane.registry.signatures`)

Anything wrong with those facts is a problem for the one route that needs them, as a
sentence an ML engineer can act on; it never affects other routes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import get_args

from gateway.controlplane.policy.fields import format_endpoint, split_endpoint, split_target
from gateway.controlplane.policy.loader import LoadedPolicy
from gateway.controlplane.policy.schema import BackendSpec, RoutingPolicy
from gateway.controlplane.registry.client import ModelVersion
from gateway.controlplane.registry.signatures import SEMVER_TAG
from gateway.dataplane.signature import Signature, SignatureCheck

ENDPOINT_TAG = "switchyard.endpoint"
PROTOCOL_TAG = "switchyard.protocol"
MODEL_TAG = "switchyard.model"
PROTOCOLS: tuple[str, ...] = get_args(RoutingPolicy.model_fields["protocol"].annotation)

VariantKey = tuple[str, str]  # (route, variant name)
# Shadows share the variants' key space under this prefix, which no variant name can
# start with (a colon is not allowed in one).
SHADOW_PREFIX = "shadow:"


def shadow_key(route: str, shadow: str) -> VariantKey:
    """The binding key of a route's shadow: (route, "shadow:NAME")."""
    return (route, SHADOW_PREFIX + shadow)


@dataclass(frozen=True, slots=True)
class Need:
    """One variant that is served wherever its registry target resolves to."""

    route: str
    variant: str
    target: str
    model: str
    alias: str | None
    version: str | None  # pinned version (models:/NAME/VERSION), else None
    protocol: str  # what its backends must speak: backend_protocol, else the route's
    backends: Mapping[str, BackendSpec] = field(default_factory=dict)  # version -> entry
    translated: bool = False  # `protocol` is the variant's backend_protocol, not the route's
    # Signatures and compatibility (the route's `signature` block): read this version's
    # signature; this is the route's champion (the reference the others are checked
    # against); the policy lets this one be incompatible with the champion.
    signatures: bool = False
    champion: bool = False
    allow_incompatible: bool = False

    @property
    def key(self) -> VariantKey:
        """(route, variant): what the compiled snapshot looks the binding up by."""
        return (self.route, self.variant)

    @property
    def lookup(self) -> str:
        """The registry lookup this need depends on: `NAME@ALIAS` or `NAME/VERSION`."""
        return f"{self.model}@{self.alias}" if self.alias else f"{self.model}/{self.version}"

    @property
    def static(self) -> bool:
        """A pinned version the policy's `backends` map serves: no registry needed."""
        return self.version is not None and self.version in self.backends


@dataclass(frozen=True, slots=True)
class Resolved:
    """Where a need is served now: the version, its pool and the backend's model name."""

    version: str
    endpoints: tuple[str, ...]
    upstream_model: str | None = None
    source: str = "tags"  # "tags" (registry) or "backends" (the policy's map)
    semver: str = ""  # the version's switchyard.semver tag
    signature: Signature | None = None  # its MLflow signature, when read
    signature_problem: str | None = None  # why `signature` is None, when asked for


class Refused(str):
    """A version the resolver will not serve for this variant: incompatible with the
    route's champion (the sentence says why). Unlike other problems, a refused weighted
    variant does not take its route down: it compiles with weight 0."""

    __slots__ = ()


Binding = Resolved | str  # a resolution, or why there is none (a problem sentence)


def needs_of(policies: Iterable[LoadedPolicy | RoutingPolicy]) -> list[Need]:
    """Every variant and shadow whose endpoints come from the registry (a target, no
    endpoints); shadows under their `shadow_key`."""
    out: list[Need] = []
    for item in policies:
        policy = item.policy if isinstance(item, LoadedPolicy) else item
        # A variant with a backend_protocol is served by backends speaking that one
        # (an Ollama route on OpenAI servers); shadows speak the route's protocol.
        served = [
            (v.name, v.target, v.endpoints, v.backend_protocol or policy.protocol)
            for v in policy.variants
        ]
        served += [
            (SHADOW_PREFIX + s.label, s.target, s.endpoints, policy.protocol) for s in policy.shadow
        ]
        spec = policy.signature
        champion = champion_of(policy)
        allowed = set(spec.allow_incompatible) if spec is not None else set()
        for name, target, endpoints, protocol in served:
            if target is None or endpoints is not None:
                continue
            model, alias, version = split_target(target)
            label = name.removeprefix(SHADOW_PREFIX)
            prefix = model + "/"
            backends = {
                key[len(prefix) :]: spec
                for key, spec in policy.backends.items()
                if key.startswith(prefix) and key[len(prefix) :].isdigit()
            }
            out.append(
                Need(
                    policy.route,
                    name,
                    target,
                    model,
                    alias,
                    version,
                    protocol,
                    backends,
                    protocol != policy.protocol,
                    signatures=spec is not None,
                    champion=name == champion,
                    allow_incompatible=label in allowed,
                )
            )
    return out


def champion_of(policy: RoutingPolicy) -> str | None:
    """The variant the route's other versions must be compatible with: the one whose
    target is an `@champion` alias, else the first variant with a registry target."""
    targeted = [v for v in policy.variants if v.target is not None]
    for variant in targeted:
        if variant.target is not None and split_target(variant.target)[1] == "champion":
            return variant.name
    return targeted[0].name if targeted else None


def bind(need: Need, found: ModelVersion | None) -> Binding:
    """Resolve `need` given the registry's record of its version (None: not known)."""
    version = need.version or (found.version if found is not None else None)
    entry = need.backends.get(version) if version is not None else None
    if found is None:
        if entry is not None and version is not None:
            return Resolved(version, tuple(entry.endpoints), entry.model, "backends")
        return f"{need.target}: not resolved yet (registry not reached)"
    where = f"{need.model} version {found.version}"
    if found.status != "READY":
        return f"{where} is {found.status}, not READY"
    protocol = found.tags.get(PROTOCOL_TAG, "").strip()
    if protocol and protocol not in PROTOCOLS:
        return (
            f"{where}: tag {PROTOCOL_TAG}={protocol!r} is not a known protocol "
            f"({', '.join(PROTOCOLS)})"
        )
    if protocol and protocol != need.protocol:
        if need.translated:
            return (
                f"{where} serves {protocol} ({PROTOCOL_TAG}) but variant {need.variant!r} "
                f"of route {need.route!r} expects {need.protocol} backends (backend_protocol)"
            )
        return (
            f"{where} serves {protocol} ({PROTOCOL_TAG}) but route {need.route!r} speaks "
            f"{need.protocol}"
        )
    semver = found.tags.get(SEMVER_TAG, "").strip()
    if entry is not None:
        return Resolved(found.version, tuple(entry.endpoints), entry.model, "backends", semver)
    raw = found.tags.get(ENDPOINT_TAG, "")
    endpoints: list[str] = []
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            url = format_endpoint(*split_endpoint(part))
        except ValueError as exc:
            return f"{where}: tag {ENDPOINT_TAG}: {exc}"
        if url not in endpoints:
            endpoints.append(url)
    if not endpoints:
        return (
            f"{where} names no serving endpoint: set its tag {ENDPOINT_TAG} "
            f"(comma-separated http:// URLs) or add backends['{need.model}/{found.version}'] "
            "to the policy"
        )
    model = found.tags.get(MODEL_TAG, "").strip() or None
    return Resolved(found.version, tuple(endpoints), model, "tags", semver)


def signature_check(
    policy: RoutingPolicy, target: str | None, binding: Binding | None
) -> SignatureCheck | None:
    """The request check of a variant served by `binding`: None unless the route
    validates requests and the version's signature was read."""
    spec = policy.signature
    if spec is None or not spec.validate_requests or not isinstance(binding, Resolved):
        return None
    if binding.signature is None:
        return None
    model = split_target(target)[0] if target is not None else policy.route
    return SignatureCheck(
        binding.signature,
        policy.protocol,
        where=f"{model} version {binding.version}",
        apis=frozenset(api.encode() for api in spec.apis),
    )
