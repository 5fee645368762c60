"""`switchyard registry ...`: promote, roll back and describe models in MLflow.

Promotion is an alias move, nothing more: every gateway re-resolves `@champion` within
its poll interval, so no deploy is involved. The rollback point lives in the registry
itself (a registered-model tag `switchyard.previous.<alias>`), not on the machine that
ran the command: any operator, or a controller, can roll back later.

With `--lease NAMESPACE/NAME` (in a cluster, or with `--kubeconfig`), a move happens
only while this process holds that `coordination.k8s.io/v1` Lease, so two promotions
(a person and a rollout controller, say) never interleave their read-then-write.

`promote` refuses a version whose `switchyard.semver` MAJOR or MLflow signature is
incompatible with the version the alias points at now (clients would be refused or
misread), unless `--allow-incompatible` is given or a policy passed with `--policies`
lists the promoted variant in its route's `signature.allow_incompatible`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from gateway.controlplane.k8s.client import KubeAccess, KubeUnavailable, identity
from gateway.controlplane.k8s.lease import LeaseLock, LeaseUnavailable
from gateway.controlplane.policy.compile import load_checked
from gateway.controlplane.policy.loader import PolicyError
from gateway.controlplane.registry.binding import (
    ENDPOINT_TAG,
    MODEL_TAG,
    PROTOCOL_TAG,
    needs_of,
)
from gateway.controlplane.registry.client import (
    MlflowRegistry,
    ModelVersion,
    RegistryConfig,
    RegistryError,
    RegistryNotFound,
)
from gateway.controlplane.registry.signatures import (
    SEMVER_TAG,
    VersionFacts,
    fetch_signature,
    incompatibility,
)
from gateway.settings import from_env

DEFAULT_URI = "http://127.0.0.1:5000"  # the quick start's MLflow server
# Lineage tags, as the versioning strategy records them on each registered version.
LINEAGE_TAGS = (
    ("training run", "training_run_id"),
    ("dataset", "training_dataset"),
    ("git commit", "git_commit_sha"),
)


def previous_tag(alias: str) -> str:
    """The registered-model tag holding the version `alias` pointed at before a move."""
    return f"switchyard.previous.{alias}"


def add_commands(subparsers: Any) -> None:
    """Register `registry` and its subcommands on the top-level CLI's subparsers."""
    registry = subparsers.add_parser(
        "registry", help="promote, roll back and describe registered models", description=__doc__
    )
    sub = registry.add_subparsers(dest="registry_command", required=True, metavar="SUBCOMMAND")

    promote = sub.add_parser(
        "promote", help="point @champion (or --to) at the version another alias points at"
    )
    promote.add_argument("name", metavar="NAME", help="registered model name")
    promote.add_argument("source", metavar="FROM_ALIAS", help="alias to promote, e.g. challenger")
    promote.add_argument("--to", default="champion", metavar="ALIAS", help="default: champion")
    promote.add_argument(
        "--allow-incompatible",
        action="store_true",
        help="promote even if the version's switchyard.semver MAJOR or signature is "
        "incompatible with the current one's",
    )
    promote.add_argument(
        "--policies",
        action="append",
        metavar="PATH",
        help="policy files or directories (repeatable): an incompatible version is "
        "promoted if a route lists the variant targeting NAME@FROM_ALIAS in "
        "signature.allow_incompatible",
    )
    _common(promote)
    _lease_options(promote)
    promote.set_defaults(handler=lambda a: _run(_promote(a)))

    rollback = sub.add_parser("rollback", help="point @champion back at its previous version")
    rollback.add_argument("name", metavar="NAME", help="registered model name")
    rollback.add_argument("--alias", default="champion", help="default: champion")
    _common(rollback)
    _lease_options(rollback)
    rollback.set_defaults(handler=lambda a: _run(_rollback(a)))

    describe = sub.add_parser("describe", help="versions, aliases and lineage of a model")
    describe.add_argument("name", metavar="NAME", help="registered model name")
    describe.add_argument("--json", action="store_true", help="print JSON")
    _common(describe)
    describe.set_defaults(handler=lambda a: _run(_describe(a)))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry-uri",
        metavar="URL",
        help=f"MLflow tracking server (default: SWITCHYARD_REGISTRY_URI, else {DEFAULT_URI})",
    )


def _lease_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "single writer", "Move the alias only while holding a Kubernetes Lease."
    )
    group.add_argument(
        "--lease", metavar="NAMESPACE/NAME", help="coordination.k8s.io/v1 Lease to hold"
    )
    group.add_argument(
        "--lease-wait",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the Lease when another holds it (default 30)",
    )
    group.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig (default: in-cluster, ~/.kube/config)"
    )


@contextlib.asynccontextmanager
async def _exclusive(args: argparse.Namespace) -> AsyncIterator[None]:
    """Hold `--lease` (if given) around an alias move; raises `LeaseUnavailable`."""
    if not getattr(args, "lease", None):
        yield
        return
    access = KubeAccess(args.kubeconfig)
    try:
        lock = LeaseLock.from_access(access, args.lease, identity())
        async with lock.held(args.lease_wait) as hold:
            yield
            if hold.lost.is_set():
                raise LeaseUnavailable(f"lease {args.lease} was lost while moving the alias")
    finally:
        await access.aclose()


def _client(args: argparse.Namespace) -> MlflowRegistry:
    settings = from_env()
    uri = args.registry_uri or settings.registry_uri or DEFAULT_URI
    return MlflowRegistry(RegistryConfig.from_settings(settings, uri))


def _run(work: Any) -> int:
    try:
        code: int = asyncio.run(work)
    except RegistryNotFound as exc:
        print(f"not found: {exc}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"registry error: {exc}", file=sys.stderr)
        return 1
    except (LeaseUnavailable, KubeUnavailable, ValueError) as exc:
        print(f"not moved: {exc}", file=sys.stderr)
        return 1
    return code


async def _current(registry: MlflowRegistry, name: str, alias: str) -> str | None:
    try:
        return (await registry.get_alias(name, alias)).version
    except RegistryNotFound:
        return None


async def move_alias(registry: MlflowRegistry, name: str, alias: str, version: str) -> str | None:
    """Point `name@alias` at `version`, recording the version it left in the
    `previous_tag(alias)` tag (the rollback point); returns that version (None: the
    alias is new). Used by `promote` and by the rollout controller's promotion."""
    old = await _current(registry, name, alias)
    if old == version:
        return old
    # Tag first, then move: a failure in between leaves a rollback point that names
    # the serving version (harmless), never a moved alias without a rollback point.
    if old is not None:
        await registry.set_model_tag(name, previous_tag(alias), old)
    await registry.set_alias(name, alias, version)
    return old


async def _promote(args: argparse.Namespace) -> int:
    name, source, target = args.name, args.source, args.to
    if source == target:
        print(f"FROM_ALIAS and --to are both {target!r}", file=sys.stderr)
        return 2
    async with _exclusive(args), _client(args) as registry:
        new = (await registry.get_alias(name, source)).version
        old = await _current(registry, name, target)
        if old == new:
            print(f"{name}@{target} is already version {new} (= @{source}); nothing to do")
            return 0
        if old is not None:
            why = await promotion_refusal(registry, name, new, old)
            if why is not None and not (args.allow_incompatible or _policy_allows(args)):
                print(f"refused: {why}", file=sys.stderr)
                print(
                    f"  {name}@{target} stays version {old}. Promote anyway with "
                    "--allow-incompatible (clients must move to the new inputs), or list "
                    f"the variant targeting models:/{name}@{source} in its route's "
                    "signature.allow_incompatible and pass --policies",
                    file=sys.stderr,
                )
                return 1
            if why is not None:
                print(f"incompatible, promoted as allowed: {why}")
        await move_alias(registry, name, target, new)
    print(f"{name}@{target}: version {old or 'none'} -> {new} (promoted from @{source})")
    if old is not None:
        print(
            f"roll back with: switchyard registry rollback {name}"
            + (f" --alias {target}" if target != "champion" else "")
            + f"  (tag {previous_tag(target)}={old})"
        )
    return 0


async def version_facts(registry: MlflowRegistry, name: str, version: str) -> VersionFacts:
    """A version's semver tag and signature (None when it cannot be read)."""
    found = await registry.get_version(name, version)
    signature, _problem = await fetch_signature(registry, name, version)
    return VersionFacts(name, version, found.tags.get(SEMVER_TAG, "").strip(), signature)


async def promotion_refusal(registry: MlflowRegistry, name: str, new: str, old: str) -> str | None:
    """Why moving an alias from version `old` to `new` would break its clients."""
    candidate, current = await asyncio.gather(
        version_facts(registry, name, new), version_facts(registry, name, old)
    )
    return incompatibility(candidate, current)


def _policy_allows(args: argparse.Namespace) -> bool:
    """Whether a policy of `--policies` allows NAME@FROM_ALIAS to be incompatible."""
    if not args.policies:
        return False
    try:
        policies = load_checked(args.policies, registry=True, file_roots=None)
    except PolicyError as exc:
        raise ValueError(f"--policies: {exc}") from None
    return any(
        n.model == args.name and n.alias == args.source and n.allow_incompatible
        for n in needs_of(policies)
    )


async def _rollback(args: argparse.Namespace) -> int:
    name, alias = args.name, args.alias
    async with _exclusive(args), _client(args) as registry:
        model = await registry.get_model(name)
        previous = model.tags.get(previous_tag(alias))
        if not previous:
            print(
                f"nothing to roll back to: {name} has no tag {previous_tag(alias)} "
                "(switchyard registry promote records it)",
                file=sys.stderr,
            )
            return 1
        current = model.aliases.get(alias)
        if current == previous:
            print(f"{name}@{alias} is already version {previous}; nothing to do")
            return 0
        await registry.get_version(name, previous)  # still registered?
        # The version rolled back from becomes the next rollback point: a second
        # rollback rolls forward again.
        if current is not None:
            await registry.set_model_tag(name, previous_tag(alias), current)
        await registry.set_alias(name, alias, previous)
    print(f"{name}@{alias}: version {current or 'none'} -> {previous} (rolled back)")
    return 0


async def _describe(args: argparse.Namespace) -> int:
    async with _client(args) as registry:
        model = await registry.get_model(args.name)
        versions = await registry.list_versions(args.name)
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        by_version.setdefault(version, []).append(alias)
    if args.json:
        data = {
            "name": model.name,
            "description": model.description,
            "aliases": dict(model.aliases),
            "tags": dict(model.tags),
            "versions": [
                {**_version_json(v), "aliases": by_version.get(v.version, [])} for v in versions
            ],
        }
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(f"model:       {model.name}")
    if model.description:
        print(f"description: {model.description}")
    aliases = ", ".join(f"@{a} -> {v}" for a, v in sorted(model.aliases.items()))
    print(f"aliases:     {aliases or 'none'}")
    for key, value in sorted(model.tags.items()):
        if key.startswith("switchyard.rollout.") and len(value) > 80:
            # A rollout's whole state (JSON with its history): `switchyard rollout status`.
            value = value[:60] + "... (see switchyard rollout status)"
        print(f"tag:         {key}={value}")
    for v in versions:
        print()
        marks = " ".join(f"@{a}" for a in by_version.get(v.version, []))
        print(f"version {v.version}  {marks + '  ' if marks else ''}{v.status}  {_when(v)}")
        for label, value in _version_lines(v):
            print(f"  {label + ':':<14}{value}")
    return 0


def _when(version: ModelVersion) -> str:
    if not version.created_ms:
        return ""
    moment = datetime.fromtimestamp(version.created_ms / 1000, UTC)
    return "created " + moment.strftime("%Y-%m-%d %H:%M UTC")


def _version_lines(version: ModelVersion) -> list[tuple[str, str]]:
    tags = version.tags
    lines = [("source", version.source or "-")]
    for label, key in LINEAGE_TAGS:
        value = tags.get(key) or (version.run_id if key == "training_run_id" else "")
        lines.append((label, value or "-"))
    serving = tags.get(ENDPOINT_TAG, "")
    if tags.get(PROTOCOL_TAG):
        serving += f" ({tags[PROTOCOL_TAG]})"
    if tags.get(MODEL_TAG):
        serving += f" as model {tags[MODEL_TAG]}"
    lines.append(("serving", serving.strip() or "- (no switchyard.endpoint tag)"))
    if version.description:
        lines.append(("description", version.description))
    return lines


def _version_json(version: ModelVersion) -> dict[str, Any]:
    data = version.to_json()
    data["tags"] = dict(version.tags)
    data["lineage"] = {key: version.tags.get(key) for _, key in LINEAGE_TAGS}
    return data
