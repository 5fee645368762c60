"""Prefix-aware picking versus least-loaded and random, on simulators with a prefix cache.

    .venv/bin/python -m loadtests.prefix_routing        # writes prefix-routing-latest.json
    .venv/bin/python -m loadtests.prefix_routing --seconds 12 --rate 70

Three OpenAI simulators model vLLM's prefix cache (`--prefix-cache-blocks`: room for
about two tenants' system prompts each) and prefill (`--prefill-tokens-per-s`: prompt
tokens not in the cache cost time, one request after another), behind one gateway with
one pool. Six tenants each have a long system prompt of their own; every request is a
streamed chat with its tenant's system prompt and a short user turn that varies. The
same request sequence (seeded: tenant and user turn per request, paced evenly at
--rate per second for --seconds) runs once per mode, each on fresh simulators and a
fresh gateway:

- least_loaded: no `picker` (the pool's default: fewest requests in flight);
- prefix_aware: `picker: {scorers: {prefix_cache: 3, queue: 1}}`;
- random: `picker: {scorers: {random: 1}}`.

A tenant's prompt stays cached only on a simulator that keeps getting it; spread over
all three, two other tenants' prompts push it out first. Recorded per mode: requests
completed, throughput (completed per second from the first send to the last
completion), time to first token p50 and p99, the simulators' prefix-cache hit rate
(tokens), and the gateway's scored picks by deciding scorer. docs/gen.py renders the
table into docs/picking.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python loadtests/prefix_routing.py` works too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from tests.procs import GatewayProc, Simulator, running, start_gateway, start_simulator

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"
PICKERS = {
    "least_loaded": "",
    "prefix_aware": "    picker: {scorers: {prefix_cache: 3, queue: 1}}\n",
    "random": "    picker: {scorers: {random: 1}}\n",
}


@dataclass(frozen=True)
class Scenario:
    """What runs; the defaults are the committed results' run."""

    endpoints: int = 3
    tenants: int = 6
    system_words: int = 800  # simulated tokens of each tenant's system prompt
    user_words: int = 24
    rate: float = 60.0  # requests per second, all tenants together
    seconds: float = 8.0
    prefill_tokens_per_s: float = 10000.0
    cache_blocks: int = 110  # of 16 tokens: about two tenants' system prompts
    tokens: int = 8
    chunk_delay_ms: int = 10
    seed: int = 16

    @property
    def cold_ms(self) -> float:
        """Prefill of a request that finds nothing cached."""
        return (self.system_words + self.user_words) / self.prefill_tokens_per_s * 1000


@dataclass
class Result:
    tenant: int
    sent_at: float
    status: int = 0
    ttft: float | None = None
    done_at: float | None = None
    failure: str = ""


def system_prompt(tenant: int, words: int) -> str:
    rng = random.Random(tenant * 7919)
    return " ".join(f"t{tenant}-{rng.randrange(10_000)}" for _ in range(words))


def requests(s: Scenario) -> list[tuple[int, str]]:
    """The request sequence every mode sends: (tenant, user turn), seeded."""
    rng = random.Random(s.seed)
    total = int(s.rate * s.seconds)
    return [
        (
            rng.randrange(s.tenants),
            " ".join(f"u{rng.randrange(100_000)}" for _ in range(s.user_words)),
        )
        for _ in range(total)
    ]


def policy(mode: str, urls: Sequence[str]) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: pool
    endpoints: [{", ".join(urls)}]
{PICKERS[mode]}timeouts: {{first_byte: 30s, total: 60s}}
retries: {{attempts: 1}}
"""


async def one(client: httpx.AsyncClient, url: str, body: bytes, tenant: int, t0: float) -> Result:
    start = time.perf_counter()
    result = Result(tenant, start - t0)
    try:
        async with client.stream(
            "POST",
            f"{url}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        ) as response:
            result.status = response.status_code
            if response.status_code != 200:
                result.failure = (await response.aread())[:200].decode(errors="replace")
                return result
            seen = b""
            async for chunk in response.aiter_bytes():
                if result.ttft is None and chunk:
                    result.ttft = time.perf_counter() - start
                seen = (seen + chunk)[-64:]
            result.done_at = time.perf_counter() - t0
            if b"[DONE]" not in seen:
                result.failure = "the stream ended without [DONE]"
    except httpx.HTTPError as exc:
        result.failure = f"{type(exc).__name__}: {exc}"
    return result


async def drive(s: Scenario, url: str, sequence: list[tuple[int, str]]) -> list[Result]:
    """Send `sequence` paced evenly at s.rate; every request's result."""
    prompts = [system_prompt(t, s.system_words) for t in range(s.tenants)]
    bodies = [
        json.dumps(
            {
                "model": "chat",
                "messages": [
                    {"role": "system", "content": prompts[tenant]},
                    {"role": "user", "content": turn},
                ],
                "stream": True,
                "max_tokens": s.tokens,
            }
        ).encode()
        for tenant, turn in sequence
    ]
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:
        await asyncio.gather(*(client.get(f"{url}/v1/models") for _ in range(8)))
        tasks: list[asyncio.Task[Result]] = []
        t0 = time.perf_counter()
        for i, body in enumerate(bodies):
            delay = t0 + i / s.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tenant = sequence[i][0]
            tasks.append(asyncio.create_task(one(client, url, body, tenant, t0)))
        return list(await asyncio.gather(*tasks))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def picks(gw: GatewayProc) -> dict[str, float]:
    """The gateway's scored picks by deciding scorer, summed over backends."""
    out: dict[str, float] = {}
    for line in gw.metrics().splitlines():
        if line.startswith("switchyard_picker_picks_total{"):
            head, _, value = line.rpartition(" ")
            scorer = head.split('scorer="', 1)[1].split('"', 1)[0]
            out[scorer] = out.get(scorer, 0.0) + float(value)
    return out


def run_mode(
    s: Scenario, mode: str, sequence: list[tuple[int, str]], workdir: Path
) -> dict[str, Any]:
    """Fresh simulators and gateway, one pass of `sequence`; the mode's numbers."""
    sim_args = (
        "--tokens", str(s.tokens),
        "--chunk-delay-ms", str(s.chunk_delay_ms),
        "--prefill-tokens-per-s", str(s.prefill_tokens_per_s),
        "--prefix-cache-blocks", str(s.cache_blocks),
    )  # fmt: skip
    sims: list[Simulator] = []
    try:
        for i in range(s.endpoints):
            sims.append(start_simulator(f"{mode}-{i}", *sim_args))
        policies = workdir / mode
        policies.mkdir(parents=True, exist_ok=True)
        (policies / "chat.yaml").write_text(policy(mode, [sim.url for sim in sims]))
        gw = start_gateway(policies)
        with running(gw.proc):
            results = asyncio.run(drive(s, gw.url, sequence))
            scored = picks(gw)
        caches = [sim.stats()["prefix_cache"] for sim in sims]
    finally:
        for sim in sims:
            sim.proc.stop()
    ok = [r for r in results if r.status == 200 and not r.failure and r.done_at is not None]
    ttfts = [r.ttft * 1000 for r in ok if r.ttft is not None]
    span = max((r.done_at for r in ok if r.done_at is not None), default=0.0)
    hit = sum(int(c["hit_tokens"]) for c in caches if isinstance(c, dict))
    miss = sum(int(c["miss_tokens"]) for c in caches if isinstance(c, dict))
    per_sim = [c["requests"] for c in caches if isinstance(c, dict)]
    return {
        "sent": len(results),
        "completed": len(ok),
        "failed": sorted({f"{r.status} {r.failure}".strip() for r in results if r not in ok}),
        "throughput_rps": round(len(ok) / span, 2) if span else 0.0,
        "ttft_p50_ms": _round(percentile(ttfts, 50)),
        "ttft_p99_ms": _round(percentile(ttfts, 99)),
        "sim_prefix_hit_rate": round(hit / (hit + miss), 4) if hit + miss else 0.0,
        "sim_requests": per_sim,
        "picks_by_scorer": scored,
    }


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Scenario()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=defaults.seconds, metavar="S")
    parser.add_argument("--rate", type=float, default=defaults.rate, metavar="RPS")
    parser.add_argument("--modes", default=",".join(PICKERS), help="comma-separated subset")
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "prefix-routing-latest.json",
        help="default loadtests/results/prefix-routing-latest.json (the docs render it)",
    )
    args = parser.parse_args(argv)
    s = Scenario(seconds=args.seconds, rate=args.rate)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(PICKERS)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(PICKERS)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.machine import machine_info

    machine = machine_info(REPO, sys.executable, {})
    given = list(sys.argv[1:] if argv is None else argv)
    machine["command"] = " ".join([".venv/bin/python -m loadtests.prefix_routing", *given])
    sequence = requests(s)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in modes:
            results[mode] = run_mode(s, mode, sequence, Path(folder))
            r = results[mode]
            print(
                f"{mode:>13}: {r['completed']}/{r['sent']} done, {r['throughput_rps']:6.1f} "
                f"req/s, TTFT p50 {_ms(r['ttft_p50_ms'])} p99 {_ms(r['ttft_p99_ms'])}, "
                f"simulator prefix hits {r['sim_prefix_hit_rate']:.0%}",
                flush=True,
            )
    output = {
        "kind": "prefix-routing",
        "machine": machine,
        "scenario": {**asdict(s), "cold_prefill_ms": s.cold_ms, "pickers": PICKERS},
        "modes": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0


def _ms(value: float | None) -> str:
    return f"{value:7.1f} ms" if value is not None else "      - ms"


if __name__ == "__main__":
    raise SystemExit(main())
