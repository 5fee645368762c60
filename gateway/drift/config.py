"""The drift worker's view of the policies: one `RouteDrift` per route with a drift block.

Gateway processes send the drift blocks of the policies they serve to the worker
(`config_entries`, as a config datagram), rather than the worker reading the policy
files itself: policies may come from a Kubernetes ConfigMap the worker cannot see,
and this way the worker follows exactly what is being served. The worker validates
each entry again with the same schema.

Every gateway process sends its config (every 2 s and on change), so a fleet's worker
hears the same config from many senders, and during a policy rollout two versions at
once. `merge_routes` makes that idempotent and stable: each route takes its entry from
the newest config that has it (the config the worker heard first most recently, among
the configs of senders heard lately), so a repeated config changes nothing and an old
replica's config cannot take a route back from a newer one. A route is watched while
some recent sender's config has it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.controlplane.policy.driftspec import DriftSpec, policy_dir
from gateway.controlplane.policy.fields import split_target
from gateway.controlplane.policy.loader import LoadedPolicy


@dataclass(frozen=True, slots=True)
class RouteDrift:
    """What the worker needs to know of one route's drift block."""

    route: str
    protocol: str
    spec: DriftSpec
    base: Path  # the policy file's folder: relative paths start here
    models: Mapping[str, str] = field(default_factory=dict)  # variant -> registered model

    def columns(self, reference_columns: Iterable[str]) -> tuple[str, ...]:
        """The compared columns: the policy's features, or else the reference's."""
        if self.spec.features:
            return tuple(f.column for f in self.spec.features)
        return tuple(str(c) for c in reference_columns)

    def detect_options(self) -> dict[str, Any]:
        """Keyword arguments of `detect.DetectConfig` besides the columns."""
        spec = self.spec
        return {
            "drift_share": spec.drift_share,
            "method": spec.method,
            "methods": dict(spec.methods),
            "threshold": spec.threshold,
        }

    def model_name(self, variants: Iterable[str]) -> str:
        """The registered model behind these variants, else the route's name."""
        for variant in sorted(variants):
            if variant in self.models:
                return self.models[variant]
        return self.route


def config_entries(policies: Sequence[LoadedPolicy]) -> list[dict[str, Any]]:
    """The drift blocks of `policies` as JSON-able entries (what gateways send)."""
    entries = []
    for loaded in policies:
        policy = loaded.policy
        if policy.drift is None:
            continue
        entries.append(
            {
                "route": policy.route,
                "protocol": policy.protocol,
                "base": str(policy_dir(loaded.source.file)),
                "models": {
                    v.name: split_target(v.target)[0]
                    for v in policy.variants
                    if v.target is not None
                },
                "drift": policy.drift.model_dump(mode="json"),
            }
        )
    return sorted(entries, key=lambda e: str(e["route"]))


@dataclass(frozen=True, slots=True)
class SeenConfig:
    """One distinct config the worker heard, and when it first heard it."""

    digest: str
    first_seen: float
    routes: Mapping[str, RouteDrift]


def merge_routes(
    configs: Iterable[SeenConfig],
) -> tuple[dict[str, RouteDrift], dict[str, list[str]]]:
    """Each route's entry from the newest config that has it (first heard last; the
    digest breaks a tie); and, per route whose entries differ, the digests that
    disagree, the winner first."""
    merged: dict[str, RouteDrift] = {}
    owner: dict[str, str] = {}
    conflicts: dict[str, list[str]] = {}
    for config in sorted(configs, key=lambda c: (c.first_seen, c.digest), reverse=True):
        for name, route in config.routes.items():
            if name not in merged:
                merged[name], owner[name] = route, config.digest
            elif merged[name] != route:
                conflicts.setdefault(name, [owner[name]]).append(config.digest)
    return merged, conflicts


def route_drifts(entries: Sequence[Mapping[str, Any]]) -> tuple[dict[str, RouteDrift], list[str]]:
    """`RouteDrift`s of config entries, and a message per entry that is not valid."""
    out: dict[str, RouteDrift] = {}
    problems: list[str] = []
    for entry in entries:
        route = str(entry.get("route", ""))
        try:
            spec = DriftSpec.model_validate(entry.get("drift"))
        except ValidationError as exc:
            problems.append(f"route {route!r}: invalid drift block: {exc}")
            continue
        models = entry.get("models")
        out[route] = RouteDrift(
            route=route,
            protocol=str(entry.get("protocol", "")),
            spec=spec,
            base=Path(str(entry.get("base") or ".")),
            models={str(k): str(v) for k, v in models.items()} if isinstance(models, dict) else {},
        )
    return out, problems
