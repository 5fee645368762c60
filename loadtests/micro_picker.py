"""What the endpoint picker costs one request, for a pool of 8: a repeatable microbenchmark.

    .venv/bin/python -m loadtests.micro_picker            # writes micro-picker-latest.json

The real compiled snapshot (one route, 8 endpoints) and the real picker objects, driven
in a loop: no sockets, no event loop. Each case picks for the same requests (chat bodies
from 8 tenants with a system prompt of --system-bytes and a varying user turn), with
random loads on the endpoints: the pool's default pick (`pick.pick`, least loaded then
KV cache) and scored pickers with more and more scorers, interleaved round by round (a
shared machine's noise falls on all alike); the medians and the best round's total.
The scored cost is split into `ask` (what the request gives the scorers: prefix block
hashes, session key, token estimate; once per request; for issued sessions also the
token's verification and the variant pin, `session_tokens.pin`) and `choose` (scores,
pick, and recording the pick). The lora cases give the endpoints LoRA reports in turn
(running the variant's adapter, another one with a slot free, full with it queued, full
without it, no report).
Runs the compiled request path when `switchyard compile` is fresh (the status is in
the output), else Python; docs/gen.py renders the numbers into docs/picking.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python loadtests/micro_picker.py` works too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from gateway import COMPILED
from gateway.controlplane.backends.load import set_lora
from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.decide import Decision
from gateway.dataplane.feedback.ids import FeedbackIds
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.pick import pick
from gateway.dataplane.session_tokens import SESSION_HEADER, header_line, mint, pin
from gateway.dataplane.snapshot import Route, Variant
from gateway.observability.metrics import GatewayMetrics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"
ENDPOINTS = 8
# name -> the variant's picker block ("" = none: the pool's default pick)
CASES = {
    "default (no picker)": "",
    "queue + kv_cache": "{scorers: {queue: 1, kv_cache: 1}, context: {fit: false}}",
    "prefix_cache + queue": "{scorers: {prefix_cache: 2, queue: 1}, context: {fit: false}}",
    "prefix + queue + kv + session + fit": (
        "{scorers: {prefix_cache: 2, queue: 1, kv_cache: 1, session: 3}, "
        "session: {key: 'header:x-session-id'}, context: {max_model_len: 32768}}"
    ),
    "queue + kv_cache + lora": "{scorers: {queue: 1, kv_cache: 1, lora: 2}, context: {fit: false}}",
    "prefix + queue + kv + session + lora + fit": (
        "{scorers: {prefix_cache: 2, queue: 1, kv_cache: 1, session: 3, lora: 2}, "
        "session: {key: 'header:x-session-id'}, context: {max_model_len: 32768}}"
    ),
    "queue + issued session (token verified)": (
        "{scorers: {queue: 1, session: 3}, session: {key: issued}, context: {fit: false}}"
    ),
}
# The LoRA reports the endpoints take turns at (running, waiting, max_loras): the
# variant's adapter is the route's name, `chat`.
LORA_REPORTS = (
    (("chat",), (), 2),
    (("law",), (), 2),
    (("law", "med"), ("chat",), 2),
    (("law", "med"), (), 2),
    ((), (), 0),
)


def policy(block: str) -> str:
    urls = ", ".join(f"http://10.0.0.{i}:8000" for i in range(ENDPOINTS))
    picker = f"\n    picker: {block}" if block else ""
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: pool
    endpoints: [{urls}]
    load_metrics: vllm{picker}
"""


def bodies(system_bytes: int, count: int, seed: int) -> list[tuple[bytes, dict[str, Any]]]:
    rng = random.Random(seed)
    systems = [
        " ".join(f"t{t}w{rng.randrange(1000)}" for _ in range(system_bytes // 7))[:system_bytes]
        for t in range(8)
    ]
    out: list[tuple[bytes, dict[str, Any]]] = []
    for _ in range(count):
        turn = " ".join(f"u{rng.randrange(100000)}" for _ in range(30))
        body = orjson.dumps(
            {
                "model": "chat",
                "messages": [
                    {"role": "system", "content": rng.choice(systems)},
                    {"role": "user", "content": turn},
                ],
                "max_tokens": 256,
                "stream": True,
            }
        )
        out.append((body, orjson.loads(body)))
    return out


def variant_for(block: str) -> tuple[Route, Variant]:
    metrics = GatewayMetrics()
    policies, problems = parse_policies(policy(block), "micro.yaml")
    assert not problems, problems
    snapshot = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    route = snapshot.routes["chat"]
    return route, route.variants[0]


def time_round(
    route: Route, variant: Variant, requests: list[tuple[bytes, dict[str, Any]]]
) -> tuple[float, float]:
    """One pass over `requests`: microseconds per request of ask (with the fit check)
    and of choose; for the default pick, (0, pick)."""
    picker = variant.picker
    states = [e.state for e in variant.endpoints]
    for k, state in enumerate(states):
        set_lora(state, *LORA_REPORTS[k % len(LORA_REPORTS)])
    rng = random.Random(1)
    loads = [[rng.randrange(6) for _ in states] for _ in range(64)]
    clock = time.perf_counter_ns
    n = len(requests)
    if picker is None:
        spent = 0
        for i in range(n):
            if i % 64 == 0:
                for state, load in zip(states, loads[(i // 64) % 64], strict=True):
                    state.in_flight = load
            start = clock()
            pick(variant, 1.0, i)
            spent += clock() - start
        return 0.0, spent / n / 1000
    made = []
    if picker.session_issue:  # turns of 500 conversations, each with its token
        signer = FeedbackIds(b"micro_picker fleet secret")
        tokens = [mint(signer, "chat", variant.name) for _ in range(500)]
        headers = [{SESSION_HEADER: tokens[i % 500]} for i in range(n)]
        start = clock()
        for (body, parsed), fields in zip(requests, headers, strict=True):
            pinned = pin(Decision(route, variant, "single", (variant,)), fields, signer)
            found = picker.ask(body, parsed, fields)
            found.session, found.rejected = pinned.token, pinned.rejected
            found.issued = header_line(pinned.token)
            picker.check_fit(found, parsed)
            made.append(found)
        ask = (clock() - start) / n / 1000
    else:
        headers = [{b"x-session-id": b"session-%d" % (i % 500)} for i in range(n)]
        start = clock()
        for (body, parsed), fields in zip(requests, headers, strict=True):
            found = picker.ask(body, parsed, fields)
            picker.check_fit(found, parsed)
            made.append(found)
        ask = (clock() - start) / n / 1000
    spent = 0
    for i, found in enumerate(made):
        if i % 64 == 0:
            for state, load in zip(states, loads[(i // 64) % 64], strict=True):
                state.in_flight = load
        begin = clock()
        picker.choose(found, 1.0, i)
        spent += clock() - begin
    return ask, spent / n / 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--system-bytes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "micro-picker-latest.json",
        help="default loadtests/results/micro-picker-latest.json (the docs render it)",
    )
    args = parser.parse_args(argv)
    status = COMPILED
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.machine import machine_info

    machine = machine_info(REPO, sys.executable, {})
    given = list(sys.argv[1:] if argv is None else argv)
    machine["command"] = " ".join([".venv/bin/python -m loadtests.micro_picker", *given])
    rows: list[dict[str, Any]] = []
    for size in args.system_bytes:
        requests = bodies(size, args.requests, seed=size)
        variants = {name: variant_for(block) for name, block in CASES.items()}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in CASES}
        for _ in range(args.rounds):  # the cases interleaved, round by round
            for name, variant in variants.items():
                times[name].append(time_round(*variant, requests))
        for name, got in times.items():
            totals = [a + c for a, c in got]
            row = {
                "case": name,
                "system_bytes": size,
                "ask_us": round(statistics.median(a for a, _ in got), 3),
                "choose_us": round(statistics.median(c for _, c in got), 3),
                "total_us": round(statistics.median(totals), 3),
                "total_best_us": round(min(totals), 3),
            }
            rows.append(row)
            print(
                f"{size:6d} B {name:>36}: ask {row['ask_us']:6.2f} us, choose "
                f"{row['choose_us']:6.2f} us, total {row['total_us']:6.2f} us (best "
                f"{row['total_best_us']:6.2f})",
                flush=True,
            )
    output = {
        "kind": "micro-picker",
        "machine": machine,
        "request_path": status.label,
        "request_path_reason": status.reason,
        "endpoints": ENDPOINTS,
        "requests": args.requests,
        "rounds": args.rounds,
        "cases": CASES,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2) + "\n")
    print(f"request path: {status.label} ({status.reason}); results written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
