"""Python cost of one proxied request, without the kernel: a repeatable microbenchmark.

The real data plane objects (ClientConnection, Exchange, UpstreamConnection, a compiled
two-variant sticky canary snapshot) are driven with in-memory transports, so the number
is the gateway's own per-request CPU in microseconds: what each optimisation changes.
Run: .venv/bin/python loadtests/micro_requestpath.py [--requests N] [--drift-sample RATE]

With --drift-sample (0..1) the route is sampled into a drift tap at that rate (0: the
tap is there but the route has no drift block, the production default); without it the
plane has no tap at all. The buffer is emptied every 1000 requests, as the sender would.
Afterwards the background sender's cost per sample (feature extraction, encoding, one
datagram per batch to a local socket) is measured too.

With --compare-flow, rounds alternate the route without and with a `flow` block whose
limit is never reached (flow control's cost to a request that does not wait: the
priority and tenant lookup, one comparison of counters per endpoint, one counter).

With --compare-ground-truth, rounds alternate the route without a block, with an
`experiment` block (each response carries a signed fb1 feedback id: the signing alone)
and with a `ground_truth` block (the fb1 id, the response held until whole, its
prediction read from the JSON and the fb2 id minted into its head): the request-path
cost of prediction capture.

With --compare-tracing, rounds alternate tracing off (no tracer), on at a 1% ratio and
on for every request (parentbased_traceidratio; the requests bring no traceparent), in
one process; the spans of each round are then OTLP-encoded, as the exporter's
background task would, and that cost is reported per request apart from the request
path's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.http.server import ClientConnection
from gateway.dataplane.http.upstream import UpstreamConnection
from gateway.dataplane.plane import DataPlane
from gateway.dataplane.snapshot import SnapshotRef
from gateway.drift.channel import receiver_socket, worker_address
from gateway.drift.features import build_extractor
from gateway.drift.sender import DriftSender
from gateway.drift.tap import DriftTap
from gateway.observability.drift_metrics import DriftCounters
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.trace_metrics import TraceCounters
from gateway.observability.tracing.otlp import Encoder
from gateway.observability.tracing.sampler import Sampler
from gateway.observability.tracing.span import Span
from gateway.observability.tracing.tracer import Tracer
from gateway.settings import Settings

POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: champion, weight: 90, endpoints: ["http://127.0.0.1:9"]}
  - {name: challenger, weight: 10, endpoints: ["http://127.0.0.1:9"]}
sticky: {hash_on: "header:x-user-id"}
overrides:
  - {match: {header: {x-cohort: beta}}, variant: challenger}
fallback: [champion]
"""

BODY = (
    b'{"model":"chat","messages":[{"role":"user","content":"Summarise the quarterly fraud '
    b'report for the risk committee, focusing on card-not-present transactions."}],'
    b'"max_tokens":64,"temperature":0.2}'
)
RESPONSE_BODY = (
    b'{"id":"x","object":"chat.completion","created":1,"model":"chat","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}'
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nserver: nginx\r\ndate: Thu, 26 Nov 2026 05:00:00 GMT\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\nconnection: keep-alive\r\n\r\n%s"
    % (len(RESPONSE_BODY), RESPONSE_BODY)
)


class MemoryTransport(asyncio.Transport):
    """Collects writes; nothing goes to the kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class SpanList:
    """The exporter's queue, minus the export: finished spans kept for encoding later."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: Any) -> None:
        self.spans.extend(spans)


FLOW = "flow: {max_in_flight: 1000000, reserve: {high: 1}}\n"
EXPERIMENT = "experiment: {confidence: 0.9}\n"
GROUND_TRUTH = 'ground_truth: {prediction: "choices[0].message.content", classes: [hello, bye]}\n'


async def measure(
    n: int,
    drift_sample: float | None = None,
    trace_rate: float | None = None,
    flow: bool = False,
    block: str = "",
) -> tuple[float, float]:
    """Microseconds per request on the request path, and (tracing) to encode its spans."""
    loop = asyncio.get_running_loop()
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    policies, problems = parse_policies(POLICY + (FLOW if flow else "") + block, "bench.yaml")
    assert not problems, problems
    snap = compile_snapshot(policies, metrics=metrics, health=health)
    assert (snap.routes["chat"].variants[0].flow is not None) == flow
    tap = None
    if drift_sample is not None:
        tap = DriftTap(1 << 30, rng=random.Random(2))
        if drift_sample > 0:
            tap.configure({"chat": drift_sample})
    sink = SpanList()
    tracer = None
    if trace_rate is not None:
        sampler = Sampler("parentbased_traceidratio", trace_rate)
        tracer = Tracer(sampler, sink, TraceCounters())
    plane = DataPlane(
        Settings(),
        SnapshotRef(snap),
        metrics,
        health,
        loop,
        random.Random(1),
        tap=tap,
        tracer=tracer,
    )
    if block == EXPERIMENT:
        plane.exposures.routes = frozenset({"chat"})  # what the rollout controller sets
    client = ClientConnection(plane)
    client.connection_made(MemoryTransport())
    endpoint = snap.routes["chat"].variants[0].endpoints[0]
    pool = plane.pool._pool(endpoint)
    upstream = UpstreamConnection(pool)
    upstream.connection_made(MemoryTransport())
    pool.active += 1
    pool.release(upstream, time.monotonic())
    requests = [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        b"x-user-id: user-%d\r\ncontent-length: %d\r\n\r\n%s" % (i, len(BODY), BODY)
        for i in range(1000)
    ]
    encoder = Encoder((("service.name", "bench"),), "switchyard", "0")
    encoding = 0.0
    spans = 0
    start = time.perf_counter()
    for i in range(n):
        client.data_received(requests[i % 1000])
        upstream.data_received(RESPONSE)
        if i % 1000 == 999:
            if tap is not None:
                tap.take()
            if sink.spans:
                # The exporter's share, off the request path: encode what the queue
                # holds (it never holds more than a few thousand spans), timed apart.
                batch, sink.spans = sink.spans, []
                spans += len(batch)
                began = time.perf_counter()
                for at in range(0, len(batch), 512):
                    encoder.encode(batch[at : at + 512])
                encoding += time.perf_counter() - began
    elapsed = time.perf_counter() - start - encoding
    served = sum(s.by_class[2] for s in metrics._series.values())
    assert served == n, f"only {served} of {n} requests completed"
    if flow:
        admitted = sum(
            rows[1][0] for pool in metrics.flow.series.values() for rows in pool.counts.values()
        )
        assert admitted == n, f"flow control admitted {admitted} of {n}"
    if block == GROUND_TRUTH:
        captured = sum(metrics.ground_truth.predictions.values())
        assert captured == n, f"captured {captured} of {n} predictions"
    if trace_rate:
        assert spans, "tracing on, but no spans were recorded"
    return elapsed / n * 1e6, encoding / n * 1e6


def sender_cost(samples: int) -> float:
    """Microseconds per sample of the background sender: extract, encode, send."""
    policies, _ = parse_policies(POLICY, "bench.yaml")
    metrics = GatewayMetrics()
    snap = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    decision = decide(snap, RequestHead("chat"), random.Random(1))
    body = orjson.loads(BODY)
    with tempfile.TemporaryDirectory() as folder:
        address = worker_address(folder)
        receiver = receiver_socket(address)
        tap = DriftTap(1 << 30)
        sender = DriftSender(tap, address, DriftCounters())
        sender._extractors = {"chat": build_extractor("openai", ())}  # no drift block needed
        tap.configure({"chat": 1.0})
        elapsed = 0.0
        for _ in range(samples // 1000):
            for _ in range(1000):
                tap.offer(decision, body)
            start = time.perf_counter()
            sender.flush()
            elapsed += time.perf_counter() - start
            while True:  # the worker's side, not timed
                try:
                    receiver.recv(1 << 17)
                except BlockingIOError:
                    break
        sender.close()
        receiver.close()
    return elapsed / samples * 1e6


def write_rounds(
    args: argparse.Namespace, kind: str, config: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    """A --compare-* run's rounds as JSON (`kind`, its `config` after the request and
    round counts), with the machine and commit they ran on."""
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.machine import machine_info

    result = {
        "kind": kind,
        "machine": machine_info(Path(__file__).resolve().parents[1], sys.executable, {}),
        "config": {"requests": args.requests, "rounds": args.rounds, **config},
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drift-sample", type=float, metavar="RATE")
    parser.add_argument(
        "--compare-tracing",
        action="store_true",
        help="alternate rounds with tracing off, sampling 1%% and 100%% of requests, in one "
        "process; also the OTLP encoding cost per request",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="with --compare-tracing, --compare-flow or --compare-ground-truth: also write the "
        "results as JSON (the docs render loadtests/results/micro-tracing-latest.json, "
        "micro-flow-latest.json, micro-ground-truth-latest.json)",
    )
    parser.add_argument(
        "--compare-flow",
        action="store_true",
        help="alternate rounds without and with a never-reached flow limit, in one process",
    )
    parser.add_argument(
        "--compare-ground-truth",
        action="store_true",
        help="alternate rounds with no block, an experiment block (signed ids) and a "
        "ground_truth block (signed ids and prediction capture), in one process",
    )
    parser.add_argument(
        "--compare-drift",
        action="store_true",
        help="alternate rounds without a tap, with drift off (rate 0) and sampling 100%%, "
        "in one process, so machine noise hits all three alike",
    )
    args = parser.parse_args()
    import uvloop

    if args.compare_tracing:
        rates: list[float | None] = [None, 0.01, 1.0]
        path: dict[float | None, list[float]] = {r: [] for r in rates}
        encode: dict[float | None, list[float]] = {r: [] for r in rates}
        for _ in range(args.rounds):
            for rate in rates:
                us, enc = uvloop.run(measure(args.requests, None, rate))
                path[rate].append(us)
                encode[rate].append(enc)
        rows = []
        for rate in rates:
            label = "tracing off" if rate is None else f"tracing {rate:.0%}"
            found = sorted(path[rate])
            print(
                f"{label:>16}: best {found[0]:.2f} us, median {found[len(found) // 2]:.2f} us "
                f"per request; OTLP encoding {min(encode[rate]):.2f} us per request "
                f"({args.rounds} rounds of {args.requests})"
            )
            rows.append(
                {
                    "rate": rate,
                    "path_best_us": found[0],
                    "path_median_us": found[len(found) // 2],
                    "path_samples_us": [round(x, 3) for x in path[rate]],
                    "encode_best_us": min(encode[rate]),
                }
            )
        if args.output:
            import gateway

            tracing = {
                "sampler": "parentbased_traceidratio",
                "policy": "route chat, champion 90 / challenger 10, sticky header:x-user-id",
                "dataplane": gateway.COMPILED.label,
            }
            write_rounds(args, "micro-tracing", tracing, rows)
        return

    if args.compare_flow:
        flows: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for flow in (False, True):
                flows[flow].append(uvloop.run(measure(args.requests, flow=flow))[0])
        flow_rows = []
        for flow in (False, True):
            label = "flow control" if flow else "no flow block"
            found = sorted(flows[flow])
            print(
                f"{label:>16}: best {found[0]:.2f} us, median {found[len(found) // 2]:.2f} us "
                f"per request ({args.rounds} rounds of {args.requests})"
            )
            flow_rows.append(
                {
                    "flow": flow,
                    "path_best_us": found[0],
                    "path_median_us": found[len(found) // 2],
                    "path_samples_us": [round(x, 3) for x in flows[flow]],
                }
            )
        if args.output:
            import gateway

            flow_config = {
                "policy": "route chat, champion 90 / challenger 10, sticky header:x-user-id",
                "flow": FLOW.strip(),
                "dataplane": gateway.COMPILED.label,
            }
            write_rounds(args, "micro-flow", flow_config, flow_rows)
        return

    if args.compare_ground_truth:
        blocks = {"none": "", "experiment": EXPERIMENT, "ground_truth": GROUND_TRUTH}
        timed: dict[str, list[float]] = {name: [] for name in blocks}
        for _ in range(args.rounds):
            for name, block in blocks.items():
                timed[name].append(uvloop.run(measure(args.requests, block=block))[0])
        truth_rows = []
        for name in blocks:
            found = sorted(timed[name])
            print(
                f"{name:>16}: best {found[0]:.2f} us, median {found[len(found) // 2]:.2f} us "
                f"per request ({args.rounds} rounds of {args.requests})"
            )
            truth_rows.append(
                {
                    "block": name,
                    "path_best_us": found[0],
                    "path_median_us": found[len(found) // 2],
                    "path_samples_us": [round(x, 3) for x in timed[name]],
                }
            )
        if args.output:
            import gateway

            truth_config = {
                "policy": "route chat, champion 90 / challenger 10, sticky header:x-user-id",
                "experiment": EXPERIMENT.strip(),
                "ground_truth": GROUND_TRUTH.strip(),
                "response_bytes": len(RESPONSE_BODY),
                "dataplane": gateway.COMPILED.label,
            }
            write_rounds(args, "micro-ground-truth", truth_config, truth_rows)
        return

    if args.compare_drift:
        configs: list[float | None] = [None, 0.0, 1.0]
        runs: dict[float | None, list[float]] = {c: [] for c in configs}
        for _ in range(args.rounds):
            for config in configs:
                runs[config].append(uvloop.run(measure(args.requests, config))[0])
        for config in configs:
            label = "no tap" if config is None else f"drift sample {config:g}"
            found = sorted(runs[config])
            print(
                f"{label:>16}: best {found[0]:.2f} us, median {found[len(found) // 2]:.2f} us "
                f"per request ({args.rounds} rounds of {args.requests})"
            )
        print(f"background sender per sample: {min(sender_cost(50_000) for _ in range(3)):.2f} us")
        return

    results = [uvloop.run(measure(args.requests, args.drift_sample))[0] for _ in range(args.rounds)]
    tap = "no tap" if args.drift_sample is None else f"drift sample {args.drift_sample:g}"
    print(
        f"python cost per proxied request ({tap}): best {min(results):.2f} us, "
        f"median {sorted(results)[len(results) // 2]:.2f} us over {args.rounds} rounds "
        f"of {args.requests} requests"
    )
    if args.drift_sample:
        cost = min(sender_cost(50_000) for _ in range(args.rounds))
        print(f"background drift sender per sample (extract, encode, send): {cost:.2f} us")


if __name__ == "__main__":
    main()
