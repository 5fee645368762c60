"""Throughput (wrk c=N) and added latency (wrk c=1) of each system, interleaved.

Rounds interleave the systems (direct, nginx, gateway, direct, ...) so that a slow
patch of the shared machine lands on all of them, and the report takes the median
round per system. CPU is read from /proc around each run: the proxy's own ticks
divided by the requests it completed, so it does not depend on how fast wrk pushed.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchlib.machine import CLK_TCK, cpu_ticks, process_tree, rss_bytes
from benchlib.procs import Service
from benchlib.wrk import WrkResult, run_wrk


@dataclass
class System:
    """One row of the table: where wrk sends requests and which process pays for them."""

    name: str
    label: str
    url: str
    proxy: Service | None
    """The process under test; None for direct (no proxy in the path)."""
    throughput: list[Sample] = field(default_factory=list)
    latency: list[Sample] = field(default_factory=list)


@dataclass(frozen=True)
class Sample:
    """One wrk run and the CPU the proxy and the upstream spent during it."""

    wrk: WrkResult
    proxy_cpu_s: float | None
    upstream_cpu_s: float


@dataclass(frozen=True)
class Plan:
    """How long and how hard to drive each system."""

    wrk: str
    script: Path
    connections: int
    duration_s: int
    repeat: int
    warmup_s: int
    latency_runs: bool
    client_cores: frozenset[int] | None = None
    """wrk's cores (--pin: the upstream's core, away from the proxy under test)."""


def measure(system: System, upstream: Service, plan: Plan, connections: int) -> Sample:
    """One wrk run against `system`, with CPU read before and after."""
    proxy_pids = process_tree(system.proxy.popen.pid) if system.proxy else []
    upstream_pids = process_tree(upstream.popen.pid)
    proxy0, up0 = cpu_ticks(proxy_pids), cpu_ticks(upstream_pids)
    result = run_wrk(
        plan.wrk,
        system.url,
        plan.script,
        connections,
        plan.duration_s,
        connections == 1,
        plan.client_cores,
    )
    proxy1, up1 = cpu_ticks(proxy_pids), cpu_ticks(upstream_pids)
    return Sample(
        wrk=result,
        proxy_cpu_s=(proxy1 - proxy0) / CLK_TCK if system.proxy else None,
        upstream_cpu_s=(up1 - up0) / CLK_TCK,
    )


def run_rounds(systems: list[System], upstream: Service, plan: Plan) -> None:
    """Warm up, then `plan.repeat` interleaved rounds; samples land on each System."""
    if plan.warmup_s > 0:
        for system in systems:
            run_wrk(
                plan.wrk,
                system.url,
                plan.script,
                plan.connections,
                plan.warmup_s,
                False,
                plan.client_cores,
            )
    for round_no in range(1, plan.repeat + 1):
        for system in systems:
            sample = measure(system, upstream, plan, plan.connections)
            system.throughput.append(sample)
            _progress(round_no, plan.repeat, f"c={plan.connections}", system, sample)
        if not plan.latency_runs:
            continue
        for system in systems:
            sample = measure(system, upstream, plan, 1)
            system.latency.append(sample)
            _progress(round_no, plan.repeat, "c=1", system, sample)


def _progress(round_no: int, rounds: int, mode: str, system: System, sample: Sample) -> None:
    w = sample.wrk
    errors = f" non-2xx={w.non2xx}" if w.non2xx else ""
    print(
        f"  round {round_no}/{rounds} {mode:<5} {system.name:<8} {w.rps:>10,.0f} req/s  "
        f"p50 {w.p50_ms:.3f} ms  p99 {w.p99_ms:.3f} ms{errors}",
        file=sys.stderr,
        flush=True,
    )


def _per_request_us(seconds: float | None, requests: int) -> float | None:
    if seconds is None or requests == 0:
        return None
    return seconds * 1e6 / requests


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(system: System) -> dict[str, object]:
    """The system's JSON entry: medians, every sample, error counts, memory."""
    tp, lat = system.throughput, system.latency
    cpu = [_per_request_us(s.proxy_cpu_s, s.wrk.requests) for s in tp]
    pids = process_tree(system.proxy.popen.pid) if system.proxy else []
    socket_errors: dict[str, int] = {}
    for s in [*tp, *lat]:
        for kind, count in s.wrk.socket_errors.items():
            socket_errors[kind] = socket_errors.get(kind, 0) + count
    return {
        "label": system.label,
        "url": system.url,
        "rps_median": statistics.median(s.wrk.rps for s in tp),
        "rps_samples": [round(s.wrk.rps, 1) for s in tp],
        "requests_total": sum(s.wrk.requests for s in [*tp, *lat]),
        "non2xx_total": sum(s.wrk.non2xx for s in [*tp, *lat]),
        "socket_errors_total": socket_errors,
        "loaded_p50_ms": statistics.median(s.wrk.p50_ms for s in tp),
        "loaded_p99_ms": statistics.median(s.wrk.p99_ms for s in tp),
        "p50_ms": _median([s.wrk.p50_ms for s in lat]),
        "p99_ms": _median([s.wrk.p99_ms for s in lat]),
        "latency_samples": [{"p50_ms": s.wrk.p50_ms, "p99_ms": s.wrk.p99_ms} for s in lat],
        "cpu_us_per_req": _median(cpu),
        "cpu_us_per_req_samples": [None if c is None else round(c, 2) for c in cpu],
        "upstream_cpu_us_per_req": _median(
            [_per_request_us(s.upstream_cpu_s, s.wrk.requests) for s in tp]
        ),
        "client_cpu_us_per_req": _median(
            [_per_request_us(s.wrk.client_cpu_s, s.wrk.requests) for s in tp]
        ),
        "rss_mb": rss_bytes(pids) / 2**20 if pids else None,
        "pids": pids,
    }


def add_comparisons(
    systems: list[System], results: dict[str, dict[str, object]]
) -> dict[str, float | None]:
    """Added latency vs direct on each row, and the ratios the README quotes.

    Each is the median over rounds of a within-round comparison: two systems measured
    seconds apart saw the same machine, while the medians of each system can come from
    different rounds (a neighbour's burst in round 2 would skew a ratio of medians).
    """
    by_name = {s.name: s for s in systems}
    direct = by_name["direct"]
    for system in systems:
        entry = results[system.name]
        for key in ("p50_ms", "p99_ms"):
            added = None
            if system is not direct and system.latency:
                added = statistics.median(
                    getattr(mine.wrk, key) - getattr(base.wrk, key)
                    for mine, base in zip(system.latency, direct.latency, strict=True)
                )
            entry[f"added_{key}"] = added

    def rps(a: str, b: str) -> float | None:
        if a not in by_name or b not in by_name:
            return None
        pairs = zip(by_name[a].throughput, by_name[b].throughput, strict=True)
        return statistics.median(x.wrk.rps / y.wrk.rps for x, y in pairs if y.wrk.rps)

    def cpu(a: str, b: str) -> float | None:
        if a not in by_name or b not in by_name:
            return None
        ratios = []
        for x, y in zip(by_name[a].throughput, by_name[b].throughput, strict=True):
            xs = _per_request_us(x.proxy_cpu_s, x.wrk.requests)
            ys = _per_request_us(y.proxy_cpu_s, y.wrk.requests)
            if xs is not None and ys:
                ratios.append(xs / ys)
        return statistics.median(ratios) if ratios else None

    def cpu_added(a: str, b: str) -> float | None:
        """Microseconds of CPU per request `a` spends beyond `b` (per-round median)."""
        diffs = []
        for x, y in zip(by_name[a].throughput, by_name[b].throughput, strict=True):
            xs = _per_request_us(x.proxy_cpu_s, x.wrk.requests)
            ys = _per_request_us(y.proxy_cpu_s, y.wrk.requests)
            if xs is not None and ys is not None:
                diffs.append(xs - ys)
        return statistics.median(diffs) if diffs else None

    ratios = {
        "gateway_vs_nginx_rps": rps("gateway", "nginx"),
        "gateway_vs_direct_rps": rps("gateway", "direct"),
        "nginx_vs_direct_rps": rps("nginx", "direct"),
        "gateway_vs_nginx_cpu": cpu("gateway", "nginx"),
    }
    if "gateway-py" in by_name:
        ratios["gateway_vs_python_rps"] = rps("gateway", "gateway-py")
        ratios["gateway_vs_python_cpu"] = cpu("gateway", "gateway-py")
        # The Python path has targets of its own (users without a compiler).
        ratios["python_vs_nginx_rps"] = rps("gateway-py", "nginx")
        ratios["python_vs_nginx_cpu"] = cpu("gateway-py", "nginx")
    for name in by_name:
        if name.startswith("gateway-trace-"):  # tracing rows (--tracing): vs untraced
            ratios[f"{name}_vs_gateway_rps"] = rps(name, "gateway")
            ratios[f"{name}_vs_gateway_cpu"] = cpu(name, "gateway")
            ratios[f"{name}_added_cpu_us"] = cpu_added(name, "gateway")
    # Before/after rows: this checkout against another commit's, and the fleet wiring.
    pairs = (
        ("gateway", "gateway-base"),
        ("gateway-fleet", "gateway"),
        ("gateway-keys", "gateway"),
        ("gateway-admission", "gateway-keys"),
        ("gateway-ground-truth", "gateway"),
    )
    for name, other in pairs:
        if name in by_name and other in by_name:
            key = f"{name}_vs_{other}".replace("-", "_")
            ratios[f"{key}_rps"] = rps(name, other)
            ratios[f"{key}_cpu"] = cpu(name, other)
            ratios[f"{key}_added_cpu_us"] = cpu_added(name, other)
    if "floor" in by_name:  # how far the full path is from what the runtime allows
        ratios["gateway_vs_floor_rps"] = rps("gateway", "floor")
        ratios["gateway_vs_floor_cpu"] = cpu("gateway", "floor")
        ratios["floor_vs_nginx_rps"] = rps("floor", "nginx")
        ratios["floor_vs_nginx_cpu"] = cpu("floor", "nginx")
    if "floor-compiled" in by_name:  # the floor again, compiled: beyond the interpreter
        ratios["floor_compiled_vs_nginx_rps"] = rps("floor-compiled", "nginx")
        ratios["floor_compiled_vs_nginx_cpu"] = cpu("floor-compiled", "nginx")
    if "litellm" in by_name:
        ratios["gateway_vs_litellm_rps"] = rps("gateway", "litellm")
        ratios["litellm_vs_gateway_cpu"] = cpu("litellm", "gateway")
    return ratios


def variant_split(metrics_text: str, route: str) -> dict[str, float]:
    """Requests per variant of `route` from the gateway's Prometheus text."""
    split: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("switchyard_requests_total{"):
            continue
        head, _, value = line.rpartition(" ")
        labels = dict(
            part.split("=", 1) for part in head[head.index("{") + 1 : -1].split(",") if "=" in part
        )
        if labels.get("route", "").strip('"') != route:
            continue
        variant = labels.get("variant", '"?"').strip('"')
        split[variant] = split.get(variant, 0.0) + float(value)
    return split
