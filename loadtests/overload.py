"""Overload: a saturated pool under flow control, about twice what it can serve.

    .venv/bin/python -m loadtests.overload                  # writes overload-latest.json
    .venv/bin/python -m loadtests.overload --overload 20    # a longer saturated phase

Starts two OpenAI simulators that stream slowly (a first token after --latency-ms, then
--tokens chunks --chunk-delay-ms apart) behind one gateway whose route has a `flow`
block: --max-in-flight requests per endpoint, of which --reserve are kept for normal
priority and above. Three API keys send paced (open-loop, evenly spaced) streamed chat
requests: `interactive` at its key's normal priority, `tenant-a` and `tenant-b` marking
themselves low with `x-switchyard-priority: low`, tenant-a three times as often.

First the interactive class alone (unloaded), then all three together for --overload
seconds at about twice what the pool serves. Recorded per class: time to first token
(p50, p99) unloaded and overloaded, how many were served, shed with 429 or 503 (each
checked for Retry-After and the OpenAI error shape); per tenant, the requests served
in the saturated window (after --warmup): the two low tenants' shares and Jain's
fairness index; the most requests either backend ever had in flight (polled); and
the gateway's own flow metrics. tests/integration/test_flow_control.py runs this same
scenario, shorter, and asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python loadtests/overload.py` works too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from tests.procs import GatewayProc, Simulator, running, start_gateway, start_simulator

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"
KEYS = {
    "interactive": "sk-overload-interactive-0001",
    "tenant-a": "sk-overload-tenant-a-000001",
    "tenant-b": "sk-overload-tenant-b-000001",
}


@dataclass(frozen=True)
class Scenario:
    """What runs; the defaults are the committed results' run."""

    endpoints: int = 2
    max_in_flight: int = 20  # per endpoint
    reserve: int = 4  # of them kept for normal priority and above
    max_queue: int = 32
    queue_timeout: float = 3.0
    # The simulators' time to first token: long, so that scheduling noise on a busy
    # machine (a process waiting its turn for a second) stays small beside it.
    latency_ms: int = 2500
    tokens: int = 6
    chunk_delay_ms: int = 50
    interactive_rate: float = 2.0  # requests/s, normal priority (the key's)
    tenant_a_rate: float = 19.5  # requests/s, low priority (the header)
    tenant_b_rate: float = 6.5
    unloaded: float = 3.0  # seconds of interactive traffic alone
    overload: float = 12.0  # seconds of everything together
    # Seconds of the overload left out of the fairness window: the first slots go to
    # whoever comes first, and their first tokens come a TTFT later.
    warmup: float = 4.0

    @property
    def hold(self) -> float:
        """Seconds a request keeps its endpoint slot (first token, then the stream)."""
        return (self.latency_ms + self.tokens * self.chunk_delay_ms) / 1000

    @property
    def capacity(self) -> float:
        """Requests/s the pool serves at most: every slot busy all the time."""
        return self.endpoints * self.max_in_flight / self.hold

    @property
    def offered(self) -> float:
        return self.interactive_rate + self.tenant_a_rate + self.tenant_b_rate


@dataclass
class Result:
    """One request as the client saw it."""

    who: str  # the key's name
    phase: str  # unloaded | overload
    sent: float  # seconds since the run began
    status: int = 0
    ttft: float | None = None  # seconds to the first body bytes of a 200
    first_at: float | None = None  # when they came (seconds since the run began)
    retry_after: str | None = None
    error: dict[str, Any] = field(default_factory=dict)  # a refusal's JSON body
    failure: str = ""  # a transport error, or a 200 stream that was cut


def policy(s: Scenario, urls: Sequence[str]) -> str:
    endpoints = ", ".join(urls)
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: pool
    endpoints: [{endpoints}]
flow:
  max_in_flight: {s.max_in_flight}
  reserve: {{normal: {s.reserve}}}
  max_queue: {s.max_queue}
  queue_timeout: {s.queue_timeout}s
timeouts: {{first_byte: 10s, total: 30s}}
"""


def keys_file() -> str:
    return json.dumps({"keys": [{"name": name, "key": key} for name, key in KEYS.items()]})


async def one(
    client: httpx.AsyncClient, url: str, who: str, phase: str, s: Scenario, t0: float
) -> Result:
    headers = {"authorization": f"Bearer {KEYS[who]}"}
    if who != "interactive":
        headers["x-switchyard-priority"] = "low"  # batch work marks itself low
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": f"{who} asks"}],
        "stream": True,
        "max_tokens": s.tokens,
    }
    start = time.perf_counter()
    result = Result(who, phase, start - t0)
    try:
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            result.status = response.status_code
            result.retry_after = response.headers.get("retry-after")
            if response.status_code != 200:
                raw = await response.aread()
                try:
                    result.error = json.loads(raw)
                except ValueError:
                    result.failure = f"not JSON: {raw[:200]!r}"
                return result
            seen = b""
            async for chunk in response.aiter_bytes():
                if result.ttft is None and chunk:
                    now = time.perf_counter()
                    result.ttft, result.first_at = now - start, now - t0
                seen = (seen + chunk)[-64:]
            if b"[DONE]" not in seen:
                result.failure = "the stream ended without [DONE]"
    except httpx.HTTPError as exc:
        result.failure = f"{type(exc).__name__}: {exc}"
    return result


async def paced(
    client: httpx.AsyncClient,
    url: str,
    who: str,
    phase: str,
    rate: float,
    start: float,
    seconds: float,
    s: Scenario,
    t0: float,
    tasks: list[asyncio.Task[Result]],
) -> None:
    """Requests evenly spaced at `rate`/s from `start` for `seconds` (run time)."""
    n = int(seconds * rate)
    for i in range(n):
        due = t0 + start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(client, url, who, phase, s, t0)))


async def watch(sims: Sequence[Simulator], peak: dict[str, int], stop: asyncio.Event) -> None:
    """The most requests each backend had in flight, polled every 50 ms; and (as
    "client_lag_ms") the longest this client's event loop was late waking up, which a
    busy machine adds to every time it measures."""
    lag = 0.0
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            for sim in sims:
                stats = (await client.get(f"{sim.url}/sim/stats")).json()
                peak[sim.name] = max(peak.get(sim.name, 0), int(stats["in_flight"]))
            before = time.perf_counter()
            await asyncio.sleep(0.05)
            lag = max(lag, time.perf_counter() - before - 0.05)
    peak["client_lag_ms"] = round(lag * 1000)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one gets everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def openai_shaped(error: dict[str, Any]) -> bool:
    inner = error.get("error")
    return isinstance(inner, dict) and {"message", "type", "param", "code"} <= set(inner)


def summarize(s: Scenario, results: list[Result], peak: dict[str, int]) -> dict[str, Any]:
    window = (s.unloaded + s.warmup, s.unloaded + s.overload)
    classes: dict[str, Any] = {}
    for who in KEYS:
        for phase in ("unloaded", "overload"):
            mine = [r for r in results if r.who == who and r.phase == phase]
            if not mine:
                continue
            ttfts = [r.ttft * 1000 for r in mine if r.ttft is not None]
            refused = [r for r in mine if r.status in (429, 503)]
            codes: dict[str, int] = {}
            for r in refused:
                code = str((r.error.get("error") or {}).get("code"))
                codes[code] = codes.get(code, 0) + 1
            firsts = [r.first_at for r in mine if r.status == 200 and r.first_at is not None]
            served_in_window = sum(1 for at in firsts if window[0] <= at <= window[1])
            classes.setdefault(who, {})[phase] = {
                "priority": "normal" if who == "interactive" else "low",
                "sent": len(mine),
                "served": sum(1 for r in mine if r.status == 200 and not r.failure),
                "shed_429": sum(1 for r in refused if r.status == 429),
                "shed_503": sum(1 for r in refused if r.status == 503),
                "refusal_codes": codes,
                "refusals_with_retry_after": sum(1 for r in refused if r.retry_after),
                "refusals_openai_shaped": sum(1 for r in refused if openai_shaped(r.error)),
                "other": sorted(
                    {f"{r.status} {r.failure}".strip() for r in mine if r.failure}
                    | {str(r.status) for r in mine if r.status not in (200, 429, 503)}
                ),
                "ttft_p50_ms": percentile(ttfts, 50),
                "ttft_p99_ms": percentile(ttfts, 99),
                "served_in_window": served_in_window,
            }
    served = [classes[t]["overload"]["served_in_window"] for t in ("tenant-a", "tenant-b")]
    lag = peak.pop("client_lag_ms", None)
    slowest = max(
        (r for r in results if r.who == "interactive" and r.ttft is not None),
        key=lambda r: r.ttft or 0.0,
    )
    mean = sum(served) / len(served)
    unloaded_p99 = classes["interactive"]["unloaded"]["ttft_p99_ms"]
    loaded_p99 = classes["interactive"]["overload"]["ttft_p99_ms"]
    return {
        "classes": classes,
        "window_s": list(window),
        "tenants_served_in_window": dict(zip(("tenant-a", "tenant-b"), served, strict=True)),
        "tenant_spread": (max(served) - min(served)) / mean if mean else None,
        "jain_index": jain(served),
        "interactive_ttft_p99_ratio": (
            loaded_p99 / unloaded_p99 if unloaded_p99 and loaded_p99 else None
        ),
        "backend_peak_in_flight": peak,
        "client_loop_lag_max_ms": lag,
        "interactive_slowest": {
            "phase": slowest.phase,
            "sent_s": round(slowest.sent, 3),
            "ttft_ms": round((slowest.ttft or 0.0) * 1000, 1),
        },
    }


def flow_metrics(gw: GatewayProc) -> dict[str, float]:
    """The gateway's switchyard_flow_requests_total samples, by their labels."""
    out: dict[str, float] = {}
    for line in gw.metrics().splitlines():
        if line.startswith("switchyard_flow_requests_total{"):
            labels, _, value = line.rpartition(" ")
            out[labels.removeprefix("switchyard_flow_requests_total")] = float(value)
    return out


async def drive(
    s: Scenario, url: str, sims: Sequence[Simulator]
) -> tuple[list[Result], dict[str, int]]:
    """The unloaded phase, then the overload; every request's result, and the most
    requests each backend had in flight."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    timeout = httpx.Timeout(s.queue_timeout + s.hold + 15.0)
    tasks: list[asyncio.Task[Result]] = []
    peak: dict[str, int] = {}
    stop = asyncio.Event()
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        # Warm the pooled connections so the first measured requests pay no connect.
        await asyncio.gather(*(client.get(f"{url}/v1/models") for _ in range(8)))
        watcher = asyncio.create_task(watch(sims, peak, stop))
        t0 = time.perf_counter()
        await paced(client, url, "interactive", "unloaded", s.interactive_rate, 0.0,
                    s.unloaded, s, t0, tasks)  # fmt: skip
        await asyncio.gather(*tasks)  # the unloaded phase ends before the overload
        begin = s.unloaded
        t0 = time.perf_counter() - begin
        await asyncio.gather(
            *(
                paced(client, url, who, "overload", rate, begin, s.overload, s, t0, tasks)
                for who, rate in (
                    ("interactive", s.interactive_rate),
                    ("tenant-a", s.tenant_a_rate),
                    ("tenant-b", s.tenant_b_rate),
                )
            )
        )
        results = list(await asyncio.gather(*tasks))
        stop.set()
        await watcher
    return results, peak


def run_scenario(s: Scenario, workdir: Path) -> dict[str, Any]:
    """Start the simulators and the gateway, run `s`, stop them; the results."""
    sim_args = (
        "--latency-ms", str(s.latency_ms),
        "--tokens", str(s.tokens),
        "--chunk-delay-ms", str(s.chunk_delay_ms),
    )  # fmt: skip
    sims: list[Simulator] = []
    try:
        for i in range(s.endpoints):
            sims.append(start_simulator(f"pool-{i}", *sim_args))
        policies = workdir / "policies"
        policies.mkdir(parents=True, exist_ok=True)
        (policies / "chat.yaml").write_text(policy(s, [sim.url for sim in sims]))
        keys = workdir / "keys.json"
        keys.write_text(keys_file())
        gw = start_gateway(policies, "--api-keys", str(keys))
        with running(gw.proc):
            results, peak = asyncio.run(drive(s, gw.url, sims))
            metrics = flow_metrics(gw)
    finally:
        for sim in sims:
            sim.proc.stop()
    summary = summarize(s, results, peak)
    summary["gateway_flow_requests"] = metrics
    return {
        "kind": "overload",
        "scenario": {
            **asdict(s),
            "hold_s": s.hold,
            "capacity_rps": s.capacity,
            "offered_rps": s.offered,
        },
        **summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Scenario()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overload", type=float, default=defaults.overload, metavar="S")
    parser.add_argument("--unloaded", type=float, default=defaults.unloaded, metavar="S")
    parser.add_argument("--warmup", type=float, default=defaults.warmup, metavar="S")
    parser.add_argument("--latency-ms", type=int, default=defaults.latency_ms)
    parser.add_argument("--max-in-flight", type=int, default=defaults.max_in_flight)
    parser.add_argument("--reserve", type=int, default=defaults.reserve)
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "overload-latest.json",
        help="default loadtests/results/overload-latest.json (the docs render it)",
    )
    args = parser.parse_args(argv)
    s = Scenario(
        overload=args.overload,
        unloaded=args.unloaded,
        warmup=args.warmup,
        latency_ms=args.latency_ms,
        max_in_flight=args.max_in_flight,
        reserve=args.reserve,
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib.machine import machine_info

    machine = machine_info(REPO, sys.executable, {})
    given = list(sys.argv[1:] if argv is None else argv)
    machine["command"] = " ".join([".venv/bin/python -m loadtests.overload", *given])
    with tempfile.TemporaryDirectory() as folder:
        result = run_scenario(s, Path(folder))
    result = {"kind": result.pop("kind"), "machine": machine, **result}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    classes = result["classes"]
    for who, phases in classes.items():
        for phase, c in phases.items():
            print(
                f"{who:>12} {phase:>9}: sent {c['sent']:4d} served {c['served']:4d} "
                f"429 {c['shed_429']:4d} 503 {c['shed_503']:4d}  TTFT p50 "
                f"{_ms(c['ttft_p50_ms'])} p99 {_ms(c['ttft_p99_ms'])}"
            )
    print(
        f"low tenants served in the saturated window: {result['tenants_served_in_window']}, "
        f"Jain {result['jain_index']:.3f}; interactive TTFT p99 x"
        f"{result['interactive_ttft_p99_ratio']:.2f} of unloaded; backends' peak in flight "
        f"{result['backend_peak_in_flight']}"
    )
    print(f"results written to {args.output}")
    return 0


def _ms(value: float | None) -> str:
    return f"{value:7.1f} ms" if value is not None else "      - ms"


if __name__ == "__main__":
    raise SystemExit(main())
