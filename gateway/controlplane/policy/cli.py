"""`switchyard policy ...`: validate, diff, explain and schema, for SREs and CI.

Exit codes follow the tools SREs already script against: `validate` is 0 or 1 like a
linter, `diff` is 0 (same), 1 (different) or 2 (bad input) like diff(1).

`diff` also says when a gateway serving OLD would hold a reload to NEW (it removes
routes nobody confirmed removing; see `diff.route_removals`), and how to confirm it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.controlplane.k8s.pools import service_pools
from gateway.controlplane.policy.compile import compile_snapshot, load_checked, policy_version
from gateway.controlplane.policy.diff import diff_policies, hold_message, route_removals
from gateway.controlplane.policy.explain import explain, render_text, statistics_for
from gateway.controlplane.policy.loader import (
    LoadedPolicy,
    PolicyError,
    PolicyProblem,
    policy_files,
)
from gateway.controlplane.policy.reference import render_markdown
from gateway.controlplane.policy.schema import render_json_schema
from gateway.controlplane.registry.binding import (
    SHADOW_PREFIX,
    Binding,
    Need,
    VariantKey,
    needs_of,
)
from gateway.controlplane.registry.client import MlflowRegistry, RegistryConfig
from gateway.controlplane.registry.resolve import RegistryResolver
from gateway.dataplane.decide import RequestHead
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.errors import UnknownRoute
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import from_env


def add_commands(subparsers: Any) -> None:
    """Register `policy` and its subcommands on the top-level CLI's subparsers."""
    policy = subparsers.add_parser(
        "policy", help="validate, diff and explain routing policies", description=__doc__
    )
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")

    validate = sub.add_parser(
        "validate", help="check policy files, directories or ConfigMaps (exit 1 on problems)"
    )
    validate.add_argument("paths", nargs="+", metavar="PATH")
    _registry_option(validate)
    validate.set_defaults(handler=run_validate)

    diff = sub.add_parser(
        "diff",
        help="show what changes between two policy sets (exit 0 same, 1 different), and "
        "whether a gateway serving OLD would hold a reload to NEW",
    )
    diff.add_argument("old", metavar="OLD")
    diff.add_argument("new", metavar="NEW")
    diff.set_defaults(handler=run_diff)

    exp = sub.add_parser("explain", help="show which variant and endpoint a request would get")
    exp.add_argument("--route", required=True, help="the route (model name) requested")
    exp.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a request header (repeatable)",
    )
    exp.add_argument("--body", metavar="FILE", help="JSON request body ('-' reads stdin)")
    exp.add_argument(
        "--policies",
        action="append",
        metavar="PATH",
        help="policy file, directory or ConfigMap (repeatable; default: policies)",
    )
    exp.add_argument("--seed", type=int, help="seed for the weighted random draw")
    exp.add_argument("--json", action="store_true", help="print the explanation as JSON")
    _registry_option(exp)
    exp.set_defaults(handler=run_explain)

    schema = sub.add_parser("schema", help="print the JSON schema of a policy document")
    schema.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    schema.add_argument(
        "--markdown", action="store_true", help="a Markdown field reference instead (README)"
    )
    schema.set_defaults(handler=run_schema)


def _registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry-uri",
        metavar="URL",
        help="resolve models:/ targets through this MLflow server, as the gateway would "
        "(default: SWITCHYARD_REGISTRY_URI; without one, registry targets are not checked)",
    )


def _build(paths: list[str], registry_uri: str | None = None) -> tuple[RuntimeSnapshot, int, int]:
    """The snapshot the gateway would serve, how many registry targets went unchecked,
    and how many `k8s://` pools were left unexpanded.

    Without a registry, targets are accepted as written and their routes compile as
    unavailable; with one, they are resolved exactly as the gateway resolves them.
    `k8s://` pools are checked for form only: offline, they compile without endpoints.
    """
    # A throwaway metrics/health pair: the CLI compiles exactly what the gateway would.
    metrics = GatewayMetrics()
    settings = from_env()
    # Local files a policy names must be where the gateway would accept them.
    policies = load_checked(paths, registry=True, file_roots=settings.file_roots)
    needs = [n for n in needs_of(policies) if not n.static]
    resolved: dict[VariantKey, Binding] = {
        n.key: f"{n.target}: not resolved (no --registry-uri given)" for n in needs
    }
    if needs and (registry_uri or settings.registry_uri):
        config = RegistryConfig.from_settings(settings, registry_uri)
        resolved = asyncio.run(_resolve(config, needs, metrics))
        problems = [
            PolicyProblem(_source_of(policies, key[0]), 0, 0, _target_field(key[1]), found)
            for key, found in resolved.items()
            if isinstance(found, str)
        ]
        if problems:
            raise PolicyError(problems)
        needs = []
    snapshot = compile_snapshot(
        policies,
        metrics=metrics,
        health=HealthRegistry(metrics),
        created_at=0.0,
        resolved=resolved,
        discovered={},
    )
    return snapshot, len(needs), len(service_pools(policies))


async def _resolve(
    config: RegistryConfig, needs: list[Need], metrics: GatewayMetrics
) -> dict[VariantKey, Binding]:
    # A standalone logger that drops everything: the problems are printed as policy
    # problems instead, and no global logging state is touched.
    quiet = logging.Logger("switchyard.cli")
    quiet.addHandler(logging.NullHandler())
    async with MlflowRegistry(config) as registry:
        resolver = RegistryResolver(registry, metrics, quiet)
        await resolver.refresh(needs)
        return resolver.bind(needs)


def _target_field(name: str) -> str:
    """Where a binding's problem is in the policy: a variant's or a shadow's target."""
    if name.startswith(SHADOW_PREFIX):
        return f"shadow[{name.removeprefix(SHADOW_PREFIX)}].target"
    return f"variants[{name}].target"


def _source_of(policies: list[LoadedPolicy], route: str) -> str:
    return next((p.source.where() for p in policies if p.policy.route == route), route)


def _print_problems(exc: PolicyError) -> None:
    for problem in exc.problems:
        print(problem)
    print(f"{len(exc.problems)} problem(s)")


def run_validate(args: argparse.Namespace) -> int:
    """`policy validate PATH...`"""
    try:
        snapshot, unchecked, pools = _build(args.paths, args.registry_uri)
    except PolicyError as exc:
        _print_problems(exc)
        return 1
    note = ""
    if unchecked:
        note = f"; {unchecked} registry target(s) not resolved (no --registry-uri)"
    if pools:
        note += f"; {pools} k8s:// pool(s) not expanded (offline)"
    print(f"ok: {len(snapshot.routes)} routes (hash {snapshot.version}){note}")
    return 0


def run_diff(args: argparse.Namespace) -> int:
    """`policy diff OLD NEW`"""
    sides = []
    for path in (args.old, args.new):
        try:
            sides.append(load_checked(path))
        except PolicyError as exc:
            print(f"{path}: invalid policy set")
            _print_problems(exc)
            return 2
    old, new = sides
    before, after = policy_version(old), policy_version(new)
    changes = diff_policies(old, new)
    for line in changes:
        print(line)
    if not changes:
        print(f"no changes (hash {before})")
        return 0
    print(f"{len(changes)} change(s): hash {before} -> {after}")
    removals = route_removals(old, new, file_kept=_kept_in(args.new))
    if removals.reason is not None:
        print(f"held ({removals.reason}): a gateway serving {args.old} would hold this reload:")
        print(f"  {hold_message(removals)}")
    return 1


def _kept_in(new: str) -> Callable[[str], bool]:
    """Whether a file of OLD is still there in NEW, as a gateway watching a directory
    sees it: by file name (directories are not recursive). One file against another
    is the same file edited, and a ConfigMap manifest counts as one file."""
    if not Path(new).is_dir():
        return lambda _file: True
    names = {path.name for path in policy_files(new)}
    return lambda file: Path(file.partition(":data[")[0]).name in names


def run_explain(args: argparse.Namespace) -> int:
    """`policy explain --route R ...`"""
    headers: list[tuple[bytes, bytes]] = []
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            print(f"--header {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        headers.append((name.strip().lower().encode("latin-1"), value.encode()))
    body: dict[str, Any] | None = None
    if args.body is not None:
        try:
            text = sys.stdin.read() if args.body == "-" else Path(args.body).read_text()
            parsed = json.loads(text)
        except (OSError, ValueError) as exc:
            print(f"--body {args.body}: {exc}", file=sys.stderr)
            return 2
        if not isinstance(parsed, dict):
            print(f"--body {args.body}: expected a JSON object", file=sys.stderr)
            return 2
        body = parsed
    try:
        snapshot, _, _ = _build(args.policies or ["policies"], args.registry_uri)
    except PolicyError as exc:
        _print_problems(exc)
        return 1
    head = RequestHead(route=args.route, headers=tuple(headers), body=body)
    # Where a gateway started with this environment reads the route's experiment or
    # rollout statistics (SWITCHYARD_STATS_SOURCE, SWITCHYARD_PROMETHEUS_URL, ...).
    settings = from_env()
    paths = args.policies or ["policies"]
    policies = load_checked(paths, registry=True, file_roots=settings.file_roots)
    policy = next((p.policy for p in policies if p.policy.route == args.route), None)
    try:
        statistics = statistics_for(policy, settings)
        result = explain(snapshot, head, random.Random(args.seed), statistics=statistics)
    except UnknownRoute:
        routes = ", ".join(sorted(snapshot.routes)) or "none"
        print(f"unknown route {args.route!r}; routes: {routes}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        sys.stdout.write(render_text(result))
    return 0


def run_schema(args: argparse.Namespace) -> int:
    """`policy schema [--output FILE] [--markdown]`"""
    text = render_markdown() if args.markdown else render_json_schema()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0
