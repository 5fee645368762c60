"""Rewrite a running gateway's policy file the way editors and config tools do, under load.

    .venv/bin/python -m loadtests.reload_under_load --policy policies/no-registry/demo.yaml
    .venv/bin/python -m loadtests.reload_under_load --gateway http://127.0.0.1:8080 \\
        --admin http://127.0.0.1:8081 --policy /path/it/watches.yaml --route chat -c 16

While `--connections` clients send chat requests to `--route` without pause, the file
goes through: a YAML syntax error, a negative weight, an unknown key, only its first
700 bytes (its comment header), empty, then its full text again. After each write the
script waits until the gateway's `switchyard_policy_reloads_total` says it processed
the edit (and prints the outcome), then for `--during` more responses, so every state
really ran under traffic. The file's original text is written back at the end,
whatever happens. Prints `N requests, M failed (status histogram)`; exits 1 if any
request failed, 2 if the gateway did not process an edit in time.

The gateway must watch the file (`switchyard serve --policies ...`, the default) and be
on loopback or reachable; nothing else is started here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

OUTCOMES = ("success", "rejected", "unchanged", "held")
HEADER_BYTES = 700


@dataclass(frozen=True, slots=True)
class Edit:
    """One rewrite of the policy file, and the reload outcome a safe gateway reports."""

    name: str
    text: str
    expect: str


def edits(full: str) -> list[Edit]:
    """The sequence from issue 20: three invalid edits, two that define no routes, and
    the full file back. `full` must open with a comment header of HEADER_BYTES or more
    and set a `weight: ` somewhere (the quick start's policy files do)."""
    header = full.encode()[:HEADER_BYTES].decode(errors="ignore")
    if any(line.strip() and not line.lstrip().startswith("#") for line in header.splitlines()):
        raise ValueError(f"the policy file's first {HEADER_BYTES} bytes must be comments only")
    if "weight: " not in full or "\nvariants:" not in full:
        raise ValueError("the policy file must set `variants:` and a `weight: `")
    return [
        Edit("YAML syntax error", full.replace("\nvariants:", "\nvariants: [", 1), "rejected"),
        Edit("negative weight", full.replace("weight: ", "weight: -", 1), "rejected"),
        Edit("unknown key", full.replace("\nvariants:", "\nvariantz: 1\nvariants:", 1), "rejected"),
        Edit(f"first {HEADER_BYTES} bytes (comment header) only", header, "held"),
        Edit("empty file", "", "held"),
        Edit("full file again", full, "unchanged"),
    ]


class Traffic:
    """`connections` clients posting chat requests until stopped or `limit` were sent."""

    def __init__(self, url: str, route: str, connections: int, limit: int) -> None:
        self.url = url
        self.route = route
        self.connections = connections
        self.limit = limit
        self.statuses: Counter[str] = Counter()
        self.sent = 0
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.done - self.statuses["200"]

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.connections)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def more(self, count: int, timeout: float) -> bool:
        """Wait until `count` more responses arrived; False if they did not in time."""
        target = self.done + count
        try:
            async with asyncio.timeout(timeout):
                while self.done < target:
                    if all(task.done() for task in self._tasks):
                        return False  # the load ended (its limit): no more will come
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def _client(self) -> None:
        body = {"model": self.route, "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(timeout=10) as client:
            while not self._stop.is_set() and self.sent < self.limit:
                self.sent += 1
                try:
                    response = await client.post(f"{self.url}/v1/chat/completions", json=body)
                    outcome = str(response.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.statuses[outcome] += 1
                self._progress.set()


async def reload_counts(client: httpx.AsyncClient, admin: str) -> Counter[str]:
    """`switchyard_policy_reloads_total` by outcome, summed over any workers."""
    text = (await client.get(f"{admin}/metrics")).text
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("switchyard_policy_reloads_total{"):
            head, _, value = line.rpartition(" ")
            for outcome in OUTCOMES:
                if f'outcome="{outcome}"' in head:
                    counts[outcome] += int(float(value))
    return counts


async def processed(
    client: httpx.AsyncClient, admin: str, before: Counter[str], timeout: float
) -> str | None:
    """The outcome of the first reload after `before`, or None if none came in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = await reload_counts(client, admin)
        grown = [o for o in OUTCOMES if now[o] > before[o]]
        if grown:
            return ",".join(grown)
        await asyncio.sleep(0.05)
    return None


async def run(args: argparse.Namespace) -> int:
    path = Path(args.policy)
    original = await asyncio.to_thread(path.read_text, encoding="utf-8")
    steps = edits(original)
    traffic = Traffic(args.gateway, args.route, args.connections, args.max_requests)
    code = 0
    async with httpx.AsyncClient(timeout=5) as admin:
        traffic.start()
        started = time.monotonic()
        try:
            if not await traffic.more(args.during, args.timeout):
                print("no traffic: is the gateway up and serving the route?", file=sys.stderr)
                code = 2
            for step in steps if code == 0 else ():
                before = await reload_counts(admin, args.admin)
                await asyncio.to_thread(path.write_text, step.text, encoding="utf-8")
                outcome = await processed(admin, args.admin, before, args.timeout)
                mark = "ok" if outcome == step.expect else f"expected {step.expect}"
                print(
                    f"{step.name:<40} -> {outcome or 'not processed in time'} ({mark}); "
                    f"{traffic.done} requests, {traffic.failed} failed so far",
                    flush=True,
                )
                if outcome is None:
                    code = 2
                    break
                await traffic.more(args.during, args.timeout)
        finally:
            await asyncio.to_thread(path.write_text, original, encoding="utf-8")
            await traffic.stop()
    took = time.monotonic() - started
    histogram = ", ".join(f"{status}: {n}" for status, n in sorted(traffic.statuses.items()))
    print(
        f"{traffic.done} requests, {traffic.failed} failed ({histogram}) in {took:.1f}s "
        f"with {args.connections} connections"
    )
    return code or (1 if traffic.failed else 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="data plane URL")
    parser.add_argument("--admin", default="http://127.0.0.1:8081", help="admin API URL")
    parser.add_argument("--policy", required=True, help="the policy file the gateway watches")
    parser.add_argument("--route", default="chat", help="the route the load calls")
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument(
        "--during", type=int, default=2000, help="responses to wait for after each edit"
    )
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="load bound")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per wait")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
