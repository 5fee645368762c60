"""`python -m loadtests.chaos`: apply fault scenarios to real processes under load.

Prints one table row per scenario (requests, failures, criterion, PASS/FAIL/SKIP) and
exits non-zero if any scenario failed; `--json FILE` writes the same rows with their
details, and the machine, date and commit of the run (as `loadtests/bench` records
them). Each scenario starts its own simulators, gateway (and MLflow for alias moves)
on loopback and stops them again, so scenarios never see each other's state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from loadtests.benchlib.machine import machine_info
from loadtests.chaos.procs import REPO, Launcher, StartError
from loadtests.chaos.scenario import Context, Result, Scale, Scenario


def build_parser(names: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.chaos",
        description="Chaos scenarios against a real gateway, simulators and MLflow on "
        "loopback. Criteria are counted (failed requests, ejections, restarts), not timed.",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        dest="scenarios",
        metavar="NAME",
        help=f"run only these (repeatable, or comma-separated): {', '.join(names)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small counts for CI; without --scenario runs only the quick scenarios",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's folder (process logs) afterwards"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return parser


async def run_one(scenario: Scenario, scale: Scale, keep: bool, verbose: bool) -> Result:
    """Run one scenario in a fresh launcher; a crash or a failed start is a FAIL row."""
    reason = scenario.unavailable()
    if reason:
        return Result(scenario.name, 0, 0, scenario.criterion, False, skipped=reason)
    started = time.monotonic()
    with Launcher(keep=keep) as launcher:
        async with httpx.AsyncClient(timeout=10) as client:
            ctx = Context(launcher, scale, client, verbose)
            try:
                result = await scenario.run(ctx)
            except (StartError, httpx.HTTPError, TimeoutError, AssertionError) as exc:
                result = Result(
                    scenario.name,
                    0,
                    1,
                    scenario.criterion,
                    False,
                    details={"error": f"{type(exc).__name__}: {exc}"[:2000]},
                )
        if keep:
            result.details["logs"] = str(launcher.root)
    result.seconds = time.monotonic() - started
    return result


def render(results: Sequence[Result]) -> str:
    """The table, as Markdown (it pastes into the README as it is)."""
    lines = [
        "| scenario | requests | failures | criterion | result |",
        "|---|---:|---:|---|---|",
    ]
    for r in results:
        verdict = f"SKIP ({r.skipped})" if r.skipped else r.verdict
        lines.append(
            f"| {r.scenario} | {r.requests:,} | {r.failures:,} | {r.criterion} | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from loadtests.chaos.scenarios import all_scenarios

    known = all_scenarios()
    by_name = {s.name: s for s in known}
    args = build_parser(list(by_name)).parse_args(argv)
    if args.list:
        for s in known:
            note = s.unavailable()
            quick = "" if s.in_quick else " [not in --quick]"
            print(f"{s.name:16} {s.criterion}{quick}{f' (skipped: {note})' if note else ''}")
        return 0
    wanted = [n.strip() for item in args.scenarios or () for n in item.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        print(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(by_name)}",
            file=sys.stderr,
        )
        return 2
    chosen = (
        [by_name[n] for n in wanted]
        if wanted
        else [s for s in known if s.in_quick or not args.quick]
    )
    scale = Scale(quick=args.quick)
    # Taken before the first scenario: the load average is the machine's, not the run's.
    machine = machine_info(REPO, sys.executable, {})
    results: list[Result] = []
    for scenario in chosen:
        if args.verbose:
            print(f"-- {scenario.name}", file=sys.stderr)
        result = asyncio.run(run_one(scenario, scale, args.keep, args.verbose))
        results.append(result)
        if args.verbose:
            print(
                f"   {result.verdict} in {result.seconds:.1f}s: {result.details}", file=sys.stderr
            )
    print(render(results))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "quick": args.quick,
                    "machine": machine,
                    "results": [r.as_json() for r in results],
                },
                indent=2,
            )
            + "\n"
        )
    failed = [r.scenario for r in results if r.verdict == "FAIL"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
