"""Latency the gateway's gRPC front adds, at concurrency 1, against the same simulator.

    .venv/bin/python loadtests/grpc_latency.py [--requests 2000] [--seconds 60]

Starts `switchyard simulate kserve --grpc-port 0` (Triton's KServe v2 gRPC service,
no simulated latency), `switchyard serve --grpc-port 0` with one kserve-v2 route in
front of it, and, as the floor any Python gRPC proxy pays, a bare grpc.aio
pass-through (raw bytes in, the same bytes out, no routing; this script run with
`--reference-proxy`). Then it sends ModelInfer calls (tritonclient.grpc, a [1,4] FP32
input sent as raw contents) one at a time, rotating direct / reference / gateway
request by request so all three see the same machine load, and prints p50/p90/p99 of
each and what the proxies added over direct. Bounded by `--requests` per target and
`--seconds` overall.

The simulator sends initial metadata (x-sim-name) with every reply, which the gateway
relays with a write of its own (the reference relays it too); real Triton sends none.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import tritonclient.grpc as triton

from tests.procs import Proc, start_gateway, start_kserve

ROUTE = "fraud"
MODEL = "fraud-detector"
SERVICE = "inference.GRPCInferenceService"
_REFERENCE_LINE = re.compile(r"reference proxy on (\S+)")


def _policy(http_url: str, grpc_port: int) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {ROUTE}
protocol: kserve-v2
variants:
  - name: main
    endpoints: ["{http_url}"]
    grpc_port: {grpc_port}
    model: {MODEL}
"""


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[89], cuts[98]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per target (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="per target, not measured")
    parser.add_argument("--seconds", type=float, default=60.0, help="overall bound")
    parser.add_argument("--reference-proxy", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_proxy:
        import uvloop

        uvloop.run(_reference_proxy(args.reference_proxy))
        return 0

    sim = start_kserve("lat-sim")
    try:
        grpc_port = int(sim.grpc.rsplit(":", 1)[1])
        reference = _start_reference(sim.grpc)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                policies = Path(tmp)
                (policies / "fraud.yaml").write_text(_policy(sim.url, grpc_port))
                gw = start_gateway(policies, "--grpc-port", "0")
                try:
                    targets = {
                        "direct": (sim.grpc, MODEL),
                        "reference": (reference[1], MODEL),
                        "gateway": (gw.grpc, ROUTE),
                    }
                    times = _measure(targets, args)
                finally:
                    gw.proc.stop()
        finally:
            reference[0].stop()
    finally:
        sim.proc.stop()
    print(f"ModelInfer, concurrency 1, {len(times['direct'])} requests per target")
    print(f"{'target':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}   added p50 / p99 ms")
    d = _percentiles(times["direct"])
    for target, samples in times.items():
        p = _percentiles(samples)
        added = "" if target == "direct" else f"   +{p[0] - d[0]:.3f} / +{p[2] - d[2]:.3f}"
        print(f"{target:<10} {p[0]:8.3f} {p[1]:8.3f} {p[2]:8.3f}{added}")
    return 0


def _start_reference(target: str) -> tuple[Proc, str]:
    popen = subprocess.Popen(
        [sys.executable, __file__, "--reference-proxy", target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc = Proc(popen)
    try:
        return proc, proc.wait_for(_REFERENCE_LINE, 60).group(1)
    except Exception:
        proc.stop()
        raise


async def _reference_proxy(target: str) -> None:
    """ModelInfer bytes relayed as they are, with the backend's initial metadata."""
    import grpc

    channel = grpc.aio.insecure_channel(target)
    infer = channel.unary_unary(f"/{SERVICE}/ModelInfer")

    async def relay(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        call = infer(data)
        reply: bytes = await call
        metadata = await call.initial_metadata()
        if metadata:
            await context.send_initial_metadata(tuple(metadata))
        return reply

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(relay)}
    )
    server = grpc.aio.server(handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"reference proxy on 127.0.0.1:{port}", flush=True)
    try:
        await server.wait_for_termination()
    except asyncio.CancelledError:
        await server.stop(0)


def _measure(
    targets: dict[str, tuple[str, str]], args: argparse.Namespace
) -> dict[str, list[float]]:
    clients = {name: triton.InferenceServerClient(addr) for name, (addr, _) in targets.items()}
    features = triton.InferInput("features", [1, 4], "FP32")
    features.set_data_from_numpy(np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32))
    names = list(targets)
    times: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.monotonic() + args.seconds
    try:
        for i in range(args.warmup + args.requests):
            if time.monotonic() > deadline:
                break
            for k in range(len(names)):
                name = names[(i + k) % len(names)]  # who goes first rotates
                model = targets[name][1]
                start = time.perf_counter()
                result = clients[name].infer(model, [features])
                elapsed = time.perf_counter() - start
                if result.as_numpy("probability") is None:
                    raise RuntimeError(f"{name}: reply without the probability output")
                if i >= args.warmup:
                    times[name].append(elapsed * 1000)
    finally:
        for client in clients.values():
            client.close()
    if len(times["direct"]) < 10:
        raise SystemExit("too few requests in the time bound; raise --seconds")
    return times


if __name__ == "__main__":
    sys.exit(main())
