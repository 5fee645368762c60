"""KServe v2 latency through the gateway versus direct to a real Triton, from one run.

    .venv/bin/python loadtests/kserve_latency.py [--requests 2000] [--max-seconds 120]

Starts a real Triton (nvidia-pytriton's tritonserver on the CPU, from .venv-triton,
`make triton-env`) serving the fraud detector's champion and challenger, and
`switchyard serve` in front of it with route `fraud-detector` split 90/10 between them
(HTTP front and gRPC front). Then, one request at a time (c=1), it sends the same
2-row FP32 `features` tensor four ways, interleaved request by request with the order
rotating so no path always follows another:

- direct HTTP: tritonclient.http to Triton's fraud-champion (binary tensor data);
- gateway HTTP: tritonclient.http to the gateway's /v2/models/fraud-detector/infer;
- direct gRPC: tritonclient.grpc ModelInfer to Triton's fraud-champion;
- gateway gRPC: tritonclient.grpc ModelInfer to the gateway's gRPC front.

Each is timed around the client's `infer` call (the client's own cost is in both
sides of the difference). Which model answered each gateway request is read off the
numbers (the two models score the tensor differently), which gives the measured canary
split. It stops after `--requests` rounds or `--max-seconds`, whichever comes first,
prints a table and writes the numbers as JSON (`--output`, by default
loadtests/results/kserve-latency-latest.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from scipy.stats import binomtest

from loadtests.benchlib.machine import machine_info
from tests.backends.triton.fraud_model import (
    CHALLENGER,
    CHAMPION,
    INPUT,
    OUTPUT,
    sample_features,
    which_model,
)
from tests.backends.triton.triton_proc import TritonServer, canary_policy, environment_problem
from tests.procs import start_gateway

ROUTE = "fraud-detector"
PATHS = ("direct-http", "gateway-http", "direct-grpc", "gateway-grpc")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "kserve-latency-latest.json"
ROWS = sample_features(2, seed=3)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with 2000 samples p99 is the 20th largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def callers(
    direct_http: httpclient.InferenceServerClient,
    via_http: httpclient.InferenceServerClient,
    direct_grpc: grpcclient.InferenceServerClient,
    via_grpc: grpcclient.InferenceServerClient,
) -> dict[str, Callable[[], np.ndarray]]:
    """One call per path, each returning the `probability` tensor it got."""
    http_in = httpclient.InferInput(INPUT, list(ROWS.shape), "FP32")
    http_in.set_data_from_numpy(ROWS, binary_data=True)
    http_out = [httpclient.InferRequestedOutput(OUTPUT, binary_data=True)]
    grpc_in = grpcclient.InferInput(INPUT, list(ROWS.shape), "FP32")
    grpc_in.set_data_from_numpy(ROWS)

    def http(client: httpclient.InferenceServerClient, model: str) -> Callable[[], np.ndarray]:
        return lambda: client.infer(model, [http_in], outputs=http_out).as_numpy(OUTPUT)

    def grpc(client: grpcclient.InferenceServerClient, model: str) -> Callable[[], np.ndarray]:
        return lambda: client.infer(model, [grpc_in]).as_numpy(OUTPUT)

    return {
        "direct-http": http(direct_http, CHAMPION),
        "gateway-http": http(via_http, ROUTE),
        "direct-grpc": grpc(direct_grpc, CHAMPION),
        "gateway-grpc": grpc(via_grpc, ROUTE),
    }


def measure(
    calls: dict[str, Callable[[], np.ndarray]], requests: int, warmup: int, max_seconds: float
) -> tuple[dict[str, list[float]], dict[str, Counter[str]], float]:
    """Interleaved c=1 rounds: per-path latencies (ms), per-front model counts, seconds."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in PATHS}
    split: dict[str, Counter[str]] = {"http": Counter(), "grpc": Counter()}
    began = time.monotonic()
    for i in range(requests):
        if time.monotonic() - began > max_seconds:
            break
        order = PATHS[i % len(PATHS) :] + PATHS[: i % len(PATHS)]
        for name in order:
            started = time.perf_counter_ns()
            probabilities = calls[name]()
            samples[name].append((time.perf_counter_ns() - started) / 1e6)
            model = which_model(ROWS, probabilities)
            if name.startswith("direct") and model != CHAMPION:
                raise RuntimeError(f"{name} got {model}'s numbers from fraud-champion")
            if name.startswith("gateway"):
                split[name.removeprefix("gateway-")][model] += 1
    return samples, split, time.monotonic() - began


def summarize(
    samples: dict[str, list[float]], split: dict[str, Counter[str]], seconds: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": len(samples["direct-http"]), "seconds": round(seconds, 2)}
    for name, got in samples.items():
        out[name] = {
            "n": len(got),
            "p50_ms": percentile(got, 50),
            "p99_ms": percentile(got, 99),
            "mean_ms": statistics.fmean(got),
        }
    for front in ("http", "grpc"):
        direct, via = samples[f"direct-{front}"], samples[f"gateway-{front}"]
        out[f"added-{front}"] = {
            "p50_ms": percentile(via, 50) - percentile(direct, 50),
            "p99_ms": percentile(via, 99) - percentile(direct, 99),
            # Each round's two calls ran back to back: their difference cancels most of
            # what the shared machine did at that moment.
            "median_of_pairs_ms": statistics.median(
                b - a for a, b in zip(direct, via, strict=True)
            ),
        }
    counts = split["http"] + split["grpc"]
    total = counts[CHAMPION] + counts[CHALLENGER]
    out["split"] = {
        "http": {"champion": split["http"][CHAMPION], "challenger": split["http"][CHALLENGER]},
        "grpc": {"champion": split["grpc"][CHAMPION], "challenger": split["grpc"][CHALLENGER]},
        "challenger_share": counts[CHALLENGER] / total if total else 0.0,
        # Two-sided exact binomial test against the configured 10%: a small p-value would
        # mean the gateway does not split as the policy says.
        "p_value_vs_10pct": binomtest(counts[CHALLENGER], total, 0.10).pvalue if total else 1.0,
    }
    return out


def report(result: dict[str, Any]) -> str:
    load = result["loadavg_1m"]
    lines = [
        f"{result['rounds']} rounds in {result['seconds']} s, c=1, paths interleaved; "
        f"{os.cpu_count()} cores, 1-min load average {load['start']:.2f} at start, "
        f"{load['end']:.2f} at end; Triton ready in {result['triton_start_s']:.1f} s",
        "",
        "| path | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|",
    ]
    for name in PATHS:
        row = result[name]
        lines.append(
            f"| {name} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} |"
        )
    lines += ["", "| gateway adds | p50 ms | p99 ms | median of pairs ms |", "|---|---|---|---|"]
    for front in ("http", "grpc"):
        row = result[f"added-{front}"]
        lines.append(
            f"| {front} | {row['p50_ms']:+.3f} | {row['p99_ms']:+.3f} | "
            f"{row['median_of_pairs_ms']:+.3f} |"
        )
    split = result["split"]
    lines += [
        "",
        f"canary split through the gateway (policy 90/10): HTTP {split['http']}, "
        f"gRPC {split['grpc']}; challenger share {split['challenger_share']:.3f} "
        f"(exact binomial p = {split['p_value_vs_10pct']:.3f} against 10%)",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kserve-latency-") as tmp:
        work = Path(tmp)
        print("starting Triton (~10 s) and the gateway ...", flush=True)
        triton = TritonServer(work / "triton")
        triton.start()
        gateway = None
        clients: list[Any] = []
        try:
            policy_dir = work / "policies"
            policy_dir.mkdir()
            (policy_dir / "fraud.yaml").write_text(canary_policy(triton, ROUTE))
            gateway = start_gateway(policy_dir, "--grpc-port", "0")
            if not gateway.grpc:
                raise RuntimeError("the gateway printed no gRPC address")
            print(
                f"Triton {triton.url} grpc {triton.grpc_hostport}; gateway {gateway.url} "
                f"grpc {gateway.grpc}",
                flush=True,
            )
            clients = [
                httpclient.InferenceServerClient(triton.http_hostport),
                httpclient.InferenceServerClient(gateway.url.removeprefix("http://")),
                grpcclient.InferenceServerClient(triton.grpc_hostport),
                grpcclient.InferenceServerClient(gateway.grpc),
            ]
            load_start = os.getloadavg()[0]
            samples, split, seconds = measure(
                callers(*clients), args.requests, args.warmup, args.max_seconds
            )
        finally:
            for client in clients:
                client.close()
            if gateway is not None:
                gateway.proc.stop()
            triton.stop()
    result = summarize(samples, split, seconds)
    result["loadavg_1m"] = {"start": load_start, "end": os.getloadavg()[0]}
    result["triton_start_s"] = triton.started_s
    if args.samples:
        result["samples_ms"] = {name: [round(v, 3) for v in got] for name, got in samples.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="rounds of 4 calls (2000)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured rounds (20)")
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="stop measuring after this (120)"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON out ({DEFAULT_OUTPUT.name})"
    )
    parser.add_argument(
        "--samples", action="store_true", help="also write every latency to the JSON"
    )
    args = parser.parse_args(argv)
    problem = environment_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    # Machine, date and commit, as loadtests/bench records them; before any load.
    machine = machine_info(Path(__file__).resolve().parents[1], sys.executable, {})
    result = run(args)
    print(report(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"command": sys.argv, "machine": machine, **result}, indent=2) + "\n"
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
