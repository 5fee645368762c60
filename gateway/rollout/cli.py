"""`switchyard rollout status|pause|resume|abort ROUTE`: operate rollouts through the admin API.

The CLI talks to a running gateway's admin API (`--admin`, default
SWITCHYARD_ADMIN_URL or http://127.0.0.1:8081) with its bearer token (`--admin-token`,
default SWITCHYARD_ADMIN_TOKEN), so commands go through the same single writer as the
controller's own steps: a replica that is not the writer leaves the command for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

DEFAULT_ADMIN = "http://127.0.0.1:8081"


def add_commands(subparsers: Any) -> None:
    """Register `rollout` and its subcommands on the top-level CLI's subparsers."""
    rollout = subparsers.add_parser(
        "rollout", help="progressive rollouts: status, pause, resume, abort", description=__doc__
    )
    sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="SUBCOMMAND")
    status = sub.add_parser("status", help="state, step, last analysis and history")
    status.add_argument("route", nargs="?", metavar="ROUTE", help="default: every rollout")
    _common(status)
    status.set_defaults(handler=_status)
    for action, text in (
        ("pause", "hold the challenger at its current step"),
        ("resume", "continue a paused rollout; restart a rolled-back or aborted one"),
        ("abort", "take the challenger out of the split (weight 0) now"),
    ):
        parser = sub.add_parser(action, help=text)
        parser.add_argument("route", metavar="ROUTE")
        _common(parser)
        parser.set_defaults(handler=_command, action=action)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin",
        metavar="URL",
        help=f"the gateway's admin API (default: SWITCHYARD_ADMIN_URL, else {DEFAULT_ADMIN})",
    )
    parser.add_argument(
        "--admin-token", metavar="TOKEN", help="bearer token (default: SWITCHYARD_ADMIN_TOKEN)"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON")


def _client(args: argparse.Namespace) -> httpx.Client:
    # Imported here: `switchyard serve` imports this module for its rollout options.
    import httpx

    base = args.admin or os.environ.get("SWITCHYARD_ADMIN_URL") or DEFAULT_ADMIN
    token = args.admin_token or os.environ.get("SWITCHYARD_ADMIN_TOKEN")
    headers = {"x-switchyard-operator": f"cli:{os.environ.get('USER', '?')}"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=base.rstrip("/"), headers=headers, timeout=10)


def _call(args: argparse.Namespace, method: str, path: str) -> tuple[int, Any]:
    import httpx

    try:
        with _client(args) as client:
            reply = client.request(method, path)
    except httpx.HTTPError as exc:
        print(f"cannot reach the admin API: {exc}", file=sys.stderr)
        return 0, None
    try:
        return reply.status_code, reply.json()
    except ValueError:
        return reply.status_code, {"error": reply.text[:200]}


def _status(args: argparse.Namespace) -> int:
    path = f"/admin/rollouts/{args.route}" if args.route else "/admin/rollouts"
    code, body = _call(args, "GET", path)
    if code != 200:
        return _failed(code, body)
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    rollouts = [body] if args.route else body.get("rollouts", [])
    if not rollouts:
        print("no route has a rollout block")
    for i, rollout in enumerate(rollouts):
        if i:
            print()
        print("\n".join(describe(rollout)))
    return 0


def _command(args: argparse.Namespace) -> int:
    code, body = _call(args, "POST", f"/admin/rollouts/{args.route}/{args.action}")
    if code not in (200, 202):
        return _failed(code, body)
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
    elif code == 202:
        print(f"{args.route}: {body.get('message', 'queued for the writer')}")
    else:
        state = body.get("state") or {}
        print(f"{args.route}: {state.get('status')} at step {_step(state)}")
    return 0


def _failed(code: int, body: Any) -> int:
    if code:
        error = body.get("error") if isinstance(body, dict) else body
        print(f"error ({code}): {error}", file=sys.stderr)
    return 1


def _step(state: dict[str, Any]) -> str:
    return (
        f"{state.get('step')}/{state.get('of_steps')} ({state.get('percent', 0):g}% to challenger)"
    )


def describe(rollout: dict[str, Any]) -> list[str]:
    """Human lines for one rollout of `GET /admin/rollouts`."""
    state = rollout.get("state")
    route = rollout.get("route")
    if state is None:
        return [f"{route}: not started (the challenger is not resolved, or serves the champion)"]
    lines = [
        f"{route}: {state['status']} at step {_step(state)}",
        f"  variant {state['challenger']} serving {state['subject']}, against the champion "
        f"serving {state['champion_version'] or '-'} when it started",
        f"  state in {rollout.get('store')}; this process "
        + ("writes it" if rollout.get("writer") else "follows it"),
    ]
    statistics = rollout.get("statistics")
    if statistics:
        at = f" at {statistics['url']}" if statistics.get("url") else ""
        health = "" if statistics.get("up") is not False else f" (down: {statistics['last_error']})"
        lines.append(f"  statistics from {statistics['kind']}{at}: {statistics['covers']}{health}")
    analysis = rollout.get("analysis")
    if analysis:
        lines.append(f"  last analysis: {analysis.get('outcome')}: {analysis.get('reason')}")
    for event in state.get("history", []):
        when = time.strftime("%H:%M:%S", time.localtime(event["at"]))
        lines.append(
            f"  {when} {event['event']:<9} step {event['step']} ({event['percent']:g}%) "
            f"{event['reason']}"
        )
    return lines


def add_rollout_options(parser: argparse.ArgumentParser) -> None:
    """`serve` options of the rollout controller."""
    group = parser.add_argument_group(
        "progressive rollouts",
        "Routes with a `rollout` block are stepped by one writer: a Kubernetes Lease in a "
        "cluster or with --rollout-lease, else an flock in --rollout-dir.",
    )
    group.add_argument(
        "--rollout-dir",
        metavar="DIR",
        help="writer lock, and rollout state without a registry (default .state/rollouts)",
    )
    group.add_argument(
        "--rollout-lease",
        metavar="NAMESPACE/NAME",
        help="Kubernetes Lease of the rollout writer (default in a cluster: "
        "<namespace>/switchyard-rollouts)",
    )
    stats = parser.add_argument_group(
        "fleet statistics",
        "Where rollout gates, GET /admin/experiments and GET /admin/shadow read their "
        "counts: this process (the default; the workers of --workers N read their "
        "supervisor's merged /metrics), or Prometheus over every replica it scrapes.",
    )
    stats.add_argument(
        "--stats-source",
        choices=["local", "prometheus"],
        help="local (default) or prometheus (needs --prometheus-url)",
    )
    stats.add_argument(
        "--prometheus-url", metavar="URL", help="Prometheus' HTTP API, e.g. http://prometheus:9090"
    )
    stats.add_argument(
        "--prometheus-selector",
        metavar="MATCHERS",
        help='label matchers narrowing the queries to this gateway, e.g. job="switchyard"',
    )
    stats.add_argument(
        "--stats-timeout",
        type=float,
        metavar="S",
        help="longest wait for one read of the statistics source (default 2)",
    )
