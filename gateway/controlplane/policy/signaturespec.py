"""A route's `signature` block: check requests against the MLflow signature of the
version they are routed to, and keep versions with an incompatible input schema off
the route unless the policy names them.

Part of the routing policy document (`schema.RoutingPolicy.signature`); the checks are
`gateway.dataplane.signature` (requests) and `gateway.controlplane.registry.signatures`
(compatibility).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Protocols whose requests carry model inputs the checker reads.
VALIDATED_PROTOCOLS = ("json", "kserve-v2")


class SignatureSpec(BaseModel):
    """Signatures and semantic versions of the route's registry versions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validate_requests: bool = Field(
        default=False,
        description="Check each request against the MLflow signature (input names, "
        "types, shapes) of the model version the request is routed to, and answer a 400 "
        "naming the input otherwise. kserve-v2 and json routes. A version whose "
        "signature cannot be read is served unchecked (and reported).",
    )
    apis: tuple[str, ...] = Field(
        default=(),
        description="json routes: the APIs whose requests are checked, such as "
        "/predict (the path after /services/ROUTE). Default: every API.",
    )
    allow_incompatible: tuple[str, ...] = Field(
        default=(),
        description="Variants and shadows (by name) allowed to serve a version that is "
        "incompatible with the champion's: another switchyard.semver MAJOR, or inputs "
        "removed, renamed, retyped or added as required. Others with such a version keep "
        "their last compatible version (or, with none, get no traffic) and the reason is "
        "reported.",
    )


def signature_problems(
    spec: SignatureSpec | None, protocol: str, names: list[str]
) -> list[tuple[tuple[str | int, ...], str]]:
    """(location under `signature`, message) of what the document's schema cannot see:
    `names` are the route's variant names and shadow labels."""
    if spec is None:
        return []
    out: list[tuple[tuple[str | int, ...], str]] = []
    if spec.validate_requests and protocol not in VALIDATED_PROTOCOLS:
        out.append(
            (
                ("signature", "validate_requests"),
                f"{protocol} routes carry no model inputs to check; validate_requests "
                f"applies to {' and '.join(VALIDATED_PROTOCOLS)} routes",
            )
        )
    if spec.apis and protocol != "json":
        out.append((("signature", "apis"), "apis applies to json routes only"))
    for i, api in enumerate(spec.apis):
        if not api.startswith("/") or " " in api:
            out.append((("signature", "apis", i), f"{api!r} must be a path such as /predict"))
    shown = ", ".join(names)
    for i, name in enumerate(spec.allow_incompatible):
        if name not in names:
            message = f"no variant or shadow named {name!r} ({shown})"
            out.append((("signature", "allow_incompatible", i), message))
    return out
