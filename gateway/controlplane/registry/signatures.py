"""Signatures and semantic versions of registry model versions, and whether two agree.

The versioning strategy the gateway follows: every registered version carries a
`switchyard.semver` tag whose MAJOR changes exactly when its input schema changes
incompatibly, and is logged with an MLflow signature (the `signature.inputs` of its
`MLmodel` file). Two versions are *incompatible* when their MAJOR numbers differ (same
registered model), or when the signatures say a client of the older one would be
refused by the newer one: an input removed or renamed, retyped to something narrower,
reshaped, or a new required input.

The resolver reads signatures off the request path when an alias resolves to a new
version (`RegistryResolver.refresh`; once per version, artifacts never change), and
`switchyard registry promote` reads them before moving an alias. A signature that
cannot be read is reported and the version is served unvalidated: an unreadable
artifact must never take a version out of traffic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from gateway.controlplane.registry.client import MlflowRegistry, RegistryError
from gateway.dataplane.signature import InputSpec, Signature, compatible_type, parse_signature

SEMVER_TAG = "switchyard.semver"
MLMODEL = "MLmodel"
_SEMVER = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[-+][0-9A-Za-z.+-]*)?$")


@dataclass(frozen=True, slots=True)
class VersionFacts:
    """What the compatibility rules look at in one model version."""

    model: str
    version: str
    semver: str = ""  # the switchyard.semver tag, "" if none
    signature: Signature | None = None  # None: not logged, not read, or not asked for


def parse_semver(text: str) -> tuple[int, int, int] | None:
    """(MAJOR, MINOR, PATCH) of `2`, `2.1`, `v2.1.0` or `2.1.0-rc1`; None otherwise."""
    found = _SEMVER.match(text.strip())
    if found is None:
        return None
    major, minor, patch = found.groups()
    return int(major), int(minor or 0), int(patch or 0)


def read_mlmodel(data: bytes) -> Signature | None:
    """The input signature in an MLmodel file's text; None when it has none. Raises
    ValueError when the file or its signature cannot be understood."""
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ValueError(f"MLmodel is not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("MLmodel is not a mapping")
    signature = doc.get("signature")
    if signature is None:
        return None
    if not isinstance(signature, dict):
        raise ValueError("MLmodel's signature is not a mapping")
    inputs = signature.get("inputs")
    if inputs is None:
        return None
    if not isinstance(inputs, (str, list)):
        raise ValueError("MLmodel's signature.inputs is neither JSON text nor a list")
    return parse_signature(inputs)


async def fetch_signature(
    registry: MlflowRegistry, name: str, version: str
) -> tuple[Signature | None, str | None]:
    """(signature, problem) of one model version: the signature or None, and why it is
    None when that is a problem worth reporting (None: read fine)."""
    try:
        data = await registry.get_version_artifact(name, version, MLMODEL)
    except RegistryError as exc:
        return None, f"{name} version {version}: its MLmodel could not be read: {exc}"
    try:
        signature = read_mlmodel(data)
    except ValueError as exc:
        return None, f"{name} version {version}: its signature could not be read: {exc}"
    if signature is None:
        return None, f"{name} version {version} was logged without a signature"
    return signature, None


def _input_change(old: InputSpec, new: InputSpec) -> str | None:
    if old.shape is None and new.shape is None:
        if compatible_type(old.type, new.type):
            return None
        return f"'{old.name}' {old.type} -> {new.type}"
    same_type = compatible_type(old.column_type, new.column_type)
    same_shape = old.shape == new.shape or (
        old.shape is not None
        and new.shape is not None
        and len(old.shape) == len(new.shape)
        and all(n in (-1, o) for o, n in zip(old.shape, new.shape, strict=True))
    )
    if same_type and same_shape:
        return None
    name = f"'{old.name}'" if old.name else "the tensor"
    before = f"{old.type} {list(old.shape) if old.shape is not None else ''}".strip()
    after = f"{new.type} {list(new.shape) if new.shape is not None else ''}".strip()
    return f"{name} {before} -> {after}"


def signature_changes(old: Signature, new: Signature) -> list[str]:
    """What a client of `old` would trip over in `new` (empty: compatible)."""
    if old.tensors != new.tensors:
        kinds = ("columns", "tensors")
        return [f"{kinds[old.tensors]} -> {kinds[new.tensors]}"]
    changes: list[str] = []
    for spec in old.inputs:
        found = new.input(spec.name)
        if found is None:
            changes.append(f"'{spec.name}' removed")
            continue
        change = _input_change(spec, found)
        if change is not None:
            changes.append(change)
    known = {s.name for s in old.inputs}
    for spec in new.inputs:
        if spec.required and spec.name not in known and not (new.tensors and spec.name is None):
            changes.append(f"'{spec.name}' added (required)")
    return changes


def incompatibility(candidate: VersionFacts, champion: VersionFacts) -> str | None:
    """Why `candidate` cannot take traffic beside (or the place of) `champion`, as one
    sentence; None when nothing says they are incompatible."""
    reasons: list[str] = []
    theirs, ours = parse_semver(champion.semver), parse_semver(candidate.semver)
    semver_note = ""
    if ours is not None and theirs is not None and candidate.model == champion.model:
        semver_note = f" is semver {candidate.semver}"
        if ours[0] != theirs[0]:
            reasons.append("MAJOR differs")
    if candidate.signature is not None and champion.signature is not None:
        changes = signature_changes(champion.signature, candidate.signature)
        if changes:
            reasons.append("inputs: " + ", ".join(changes))
    if not reasons:
        return None
    head = f"version {candidate.version} of {candidate.model}{semver_note}"
    other = f"the champion ({champion.model} version {champion.version})"
    if candidate.model == champion.model:
        other = f"the champion (version {champion.version})"
    if semver_note:
        return f"{head}, {other} is {champion.semver}: " + "; ".join(reasons)
    return f"{head} does not fit {other}: " + "; ".join(reasons)
