"""Soak: N minutes of mixed traffic through a real gateway, watching for slow leaks.

    .venv/bin/python -m loadtests.soak --minutes 30            # the README's figures
    .venv/bin/python -m loadtests.soak --minutes 2 --interval 10  # a quick look

Starts two OpenAI simulators (a sticky 90/10 canary) and an Ollama simulator behind
one gateway, sends paced mixed traffic (chat, chat streams, Ollama streams, sticky
users), and every interval records the gateway's resident memory and open file
descriptors (from /proc), its asyncio task count and client connections (from
/metrics), and the interval's request latency percentiles. Prints a row per interval
and writes everything as JSON (rewritten each interval, so a stopped soak leaves its
data). Exits 1 if any request failed. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python loadtests/soak.py` works too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from loadtests.benchlib.machine import machine_info
from loadtests.chaos.load import Load, Outcome, chat, ollama_chat
from loadtests.chaos.procs import Child, Launcher, metric_value
from loadtests.chaos.scenario import canary_policy, pool_policy

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"


@dataclass
class Sample:
    """One interval's observations."""

    minute: float
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    fds: int
    tasks: int
    connections: int


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def soak(args: argparse.Namespace) -> int:
    output = Path(args.json or RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Machine, date and commit, as loadtests/bench records them; before any load.
    machine = machine_info(REPO, sys.executable, {})
    with Launcher(prefix="switchyard-soak-") as launcher:
        sim = ("--tokens", "16", "--latency-ms", "2", "--chunk-delay-ms", "1")
        a = await launcher.simulator("soak-a", *sim)
        b = await launcher.simulator("soak-b", *sim)
        o = await launcher.simulator("soak-ollama", *sim, kind="ollama")
        gw = await launcher.gateway(
            {
                "chat.yaml": canary_policy("chat", a.url, b.url, (90, 10)),
                "local.yaml": pool_policy("local", [o.url], protocol="ollama"),
            },
            "--log-level",
            "warning",
        )
        print(f"soak: gateway pid {gw.pid} at {gw.url}; {args.minutes} min, {args.rate} req/s")
        mix = [chat("chat"), chat("chat", stream=True), ollama_chat("local"), chat("chat")]
        window: list[float] = []
        failed = [0]

        def record(outcome: Outcome) -> None:
            if outcome.ok:
                window.append(outcome.seconds)
            else:
                failed[0] += 1

        samples: list[Sample] = []
        started = time.monotonic()
        end = started + args.minutes * 60
        header = (
            f"{'min':>6} {'req':>8} {'fail':>5} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'RSS MB':>7} {'fds':>5} {'tasks':>6} {'conns':>6}"
        )
        print(header, flush=True)
        async with (
            httpx.AsyncClient(timeout=10) as client,
            Load(
                gw.url,
                mix,
                workers=args.workers,
                rate=args.rate,
                limit=10**9,
                seconds=args.minutes * 60 + 5,
                on_outcome=record,
            ) as load,
        ):
            samples.append(await sample(client, gw, 0.0, [], 0, 0, 0.0))
            while time.monotonic() < end:
                await asyncio.sleep(min(args.interval, max(0.0, end - time.monotonic())))
                taken, window[:] = list(window), []
                fails, failed[0] = failed[0], 0
                minute = (time.monotonic() - started) / 60
                elapsed = (minute - samples[-1].minute) * 60 or 1.0
                samples.append(await sample(client, gw, minute, taken, fails, len(taken), elapsed))
                print(_row(samples[-1]), flush=True)
                _write(output, args, machine, samples, load.tally.requests, load.tally.failures)
            tally = await load.stop()
        _write(output, args, machine, samples, tally.requests, tally.failures)
    summary = _summary(samples)
    print(f"soak: {tally.requests:,} requests, {tally.failures} failed; {summary}")
    print(f"soak: results in {output}")
    return 1 if tally.failures else 0


async def sample(
    client: httpx.AsyncClient,
    gw: Child,
    minute: float,
    latencies: list[float],
    failures: int,
    ok: int,
    elapsed: float,
) -> Sample:
    text = (await client.get(f"{gw.admin}/metrics")).text
    return Sample(
        minute=round(minute, 2),
        requests=ok + failures,
        failures=failures,
        rps=round((ok + failures) / elapsed, 1) if elapsed else 0.0,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 2),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 2),
        rss_mb=round(rss_mb(gw.pid), 1),
        fds=open_fds(gw.pid),
        tasks=int(metric_value(text, "switchyard_event_loop_tasks")),
        connections=int(metric_value(text, "switchyard_client_connections")),
    )


def _row(s: Sample) -> str:
    return (
        f"{s.minute:6.1f} {s.requests:8d} {s.failures:5d} {s.rps:7.1f} {s.p50_ms:8.2f} "
        f"{s.p99_ms:8.2f} {s.rss_mb:7.1f} {s.fds:5d} {s.tasks:6d} {s.connections:6d}"
    )


def _summary(samples: list[Sample]) -> dict[str, object]:
    if len(samples) < 2:
        return {}
    first, warm, last = samples[0], samples[1], samples[-1]
    running = [s for s in samples[1:] if s.requests]
    return {
        "rss_mb_start": first.rss_mb,
        "rss_mb_after_first_interval": warm.rss_mb,
        "rss_mb_end": last.rss_mb,
        "rss_mb_max": max(s.rss_mb for s in samples),
        "fds_start": first.fds,
        "fds_end": last.fds,
        "fds_max": max(s.fds for s in samples),
        "tasks_start": first.tasks,
        "tasks_end": last.tasks,
        "tasks_max": max(s.tasks for s in samples),
        "p50_ms_first": warm.p50_ms,
        "p50_ms_last": last.p50_ms,
        "p50_ms_median": statistics.median(s.p50_ms for s in running) if running else 0.0,
        "p99_ms_first": warm.p99_ms,
        "p99_ms_last": last.p99_ms,
        "p99_ms_max": max((s.p99_ms for s in running), default=0.0),
    }


def _write(
    output: Path,
    args: argparse.Namespace,
    machine: dict[str, object],
    samples: list[Sample],
    requests: int,
    failures: int,
) -> None:
    data = {
        "command": " ".join(sys.argv),
        "machine": machine,
        "minutes": args.minutes,
        "rate": args.rate,
        "workers": args.workers,
        "interval_s": args.interval,
        "requests": requests,
        "failures": failures,
        "summary": _summary(samples),
        "samples": [asdict(s) for s in samples],
    }
    output.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.soak",
        description="Mixed traffic through a real gateway for N minutes; records RSS, open "
        "fds, asyncio tasks and latency percentiles per interval.",
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds per row (default 30)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s (default 200)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--json", metavar="FILE", help="default: loadtests/results/soak-DATE.json")
    args = parser.parse_args(argv)
    if not Path("/proc/self/status").exists():
        print("soak: needs Linux /proc to read the gateway's memory and fds", file=sys.stderr)
        return 2
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
