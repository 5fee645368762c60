"""`loadtests/bench`: command line and the two modes (throughput, streaming)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchlib import configs, report
from benchlib.machine import machine_info, pin, process_tree, rss_bytes
from benchlib.procs import (
    REPO,
    BenchError,
    Launcher,
    Service,
    find_tool,
    free_port,
    gateway_python,
    get,
    post,
)
from benchlib.streaming import run_streams
from benchlib.throughput import (
    Plan,
    System,
    add_comparisons,
    run_rounds,
    summarize,
    variant_split,
)
from benchlib.wrk import write_script

RESULTS = REPO / "loadtests" / "results"
LITELLM_VENV = REPO / "loadtests" / ".litellm-venv"
# The version this harness was last run against; pinned so peer numbers are reproducible.
LITELLM_SPEC = "litellm[proxy]==1.106.12"
POLICY_SUMMARY = (
    "route chat, champion 90 / challenger 10, sticky header:x-user-id, "
    "override x-cohort=beta, fallback, retries 2"
)

DESCRIPTION = """\
Benchmark the Switchyard gateway against nginx on this machine.

Starts, on loopback and in a temp dir (all removed on exit, Ctrl-C included):
  upstream  nginx answering every POST with a fixed ~400-byte chat.completion
  direct    wrk -> upstream (the ceiling)
  nginx     wrk -> nginx reverse proxy (1 worker, upstream keepalive) -> upstream
  gateway   wrk -> switchyard serve (1 process, a 90/10 sticky canary) -> upstream
  litellm   wrk -> LiteLLM proxy (1 worker) -> upstream         (with --litellm)
and drives each with wrk (-t1, a ~300-byte chat body, a new x-user-id per request),
interleaved for --repeat rounds; reports the median req/s, p50/p99 at c=1, CPU
microseconds per request of the proxy process and its RSS.

--streaming instead measures SSE through the gateway against the bundled simulator:
time to first byte and added time per chunk, direct vs nginx vs gateway vs the Python
floor (relaying each read as it comes), at c=1.
"""

EPILOG = """\
examples:
  loadtests/bench                          # 10 s x 3 rounds, c=32, plus c=1 latency
  loadtests/bench --duration 5 --repeat 3 --markdown
  loadtests/bench --streaming              # SSE: 20- and 200-token streams
  loadtests/bench --install-litellm        # one-off, takes a few minutes
  loadtests/bench --litellm                # add LiteLLM proxy as a row

needs: nginx and wrk (apt-get install -y nginx wrk). On a shared 2-core machine the
client, the proxy and the upstream compete for the cores: quote ratios from one run,
not absolute numbers from different runs.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadtests/bench",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=_positive, default=10, help="seconds per wrk run (default 10)"
    )
    parser.add_argument(
        "--repeat", type=_positive, default=3, help="interleaved rounds; median (default 3)"
    )
    parser.add_argument(
        "-c", "--connections", type=_positive, default=32, help="wrk connections (default 32)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: no warm-up, no c=1 latency runs, 20 streams with --streaming",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON results (default loadtests/results/bench-latest.json, "
        "or bench-streaming-latest.json with --streaming)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="also print the table as Markdown for a README"
    )
    parser.add_argument(
        "--streaming", action="store_true", help="run the SSE benchmark instead of wrk"
    )
    parser.add_argument(
        "--streams", type=_positive, default=200, help="streams per system and length (200)"
    )
    parser.add_argument(
        "--stream-tokens",
        type=_token_list,
        default=(20, 200),
        metavar="N[,N...]",
        help="content chunks per stream (default 20,200)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="gateway worker processes (only 1 until `switchyard serve` has --workers)",
    )
    parser.add_argument(
        "--shadow-sample",
        type=_fraction,
        default=configs.SHADOW_SAMPLE,
        metavar="F",
        help="share of the gateway's requests mirrored to a shadow (same upstream); "
        f"0 turns shadowing off (default {configs.SHADOW_SAMPLE:g}, as issue 4's targets)",
    )
    parser.add_argument(
        "--drift-sample",
        type=_fraction,
        default=configs.DRIFT_SAMPLE,
        metavar="F",
        help="share of the gateway's requests sampled for drift (features extracted and "
        f"sent in the gateway process); 0 turns it off (default {configs.DRIFT_SAMPLE:g})",
    )
    parser.add_argument(
        "--dataplane",
        choices=("compiled", "python"),
        default="compiled",
        help="the gateway row's request path: compiled (SWITCHYARD_COMPILED=require, a "
        "stale or missing build fails) or python (=0, where no compiler is); default "
        "compiled",
    )
    parser.add_argument(
        "--tracing",
        type=_fraction_list,
        metavar="F[,F...]",
        help="add a row per rate for the same gateway tracing that share of requests "
        "(OTEL_TRACES_SAMPLER=parentbased_traceidratio, spans exported over OTLP/HTTP to "
        "a local nginx sink), beside the untraced one; e.g. 0.01,1. Results go to "
        "bench-tracing-latest.json unless --output says otherwise",
    )
    parser.add_argument(
        "--experiment",
        action="store_true",
        help="give the bench route an `experiment:` block, so every response is "
        "attributed for POST /v1/feedback (a signed feedback id per response)",
    )
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="add a row for the same gateway wired for a fleet: feedback claims in a "
        "local redis-server, statistics from a local Prometheus scraping it every 5 s, "
        "drift rows sent over UDP, a fleet secret (needs redis-server and prometheus)",
    )
    parser.add_argument(
        "--tree",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="the checkout whose gateway is the `gateway` row (default: this one)",
    )
    parser.add_argument(
        "--admission",
        action="store_true",
        help="add two rows for the same gateway behind an API key: without limits, and "
        "with rpm, tpm and budget limits and prices and a `flow:` block, none of them "
        "reached (what admission costs a request it admits)",
    )
    parser.add_argument(
        "--ground-truth",
        action="store_true",
        help="add a row for the same gateway with a `ground_truth:` block: every response "
        "held until whole, its prediction read and an fb2 feedback id minted (capture on "
        "vs off). Results go to bench-ground-truth-latest.json unless --output says so",
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        metavar="DIR",
        help="add a row for the gateway of another checkout (e.g. `git worktree add "
        "/tmp/base <commit>`, compiled there with `python -m gateway compile`), same "
        "policy: before/after in one run",
    )
    parser.add_argument(
        "--with-python",
        action="store_true",
        help="add a row for the same gateway on its pure-Python request path "
        "(SWITCHYARD_COMPILED=0): what `switchyard compile` buys, in the same run",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin processes to cores (default with 2+ cores: every proxy under "
        "test on core 0, the upstream nginx and wrk on core 1, so a proxy never competes "
        "with its load)",
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="leave out the Python floor row (benchlib/floor.py: a minimal uvloop + "
        "httptools proxy with a sticky two-variant pick, what the runtime allows)",
    )
    parser.add_argument(
        "--compiled-floor",
        action="store_true",
        help="add the same floor compiled with mypyc (built into the temp dir, ~10 s): "
        "what compiled code doing that little reaches (throughput runs)",
    )
    parser.add_argument(
        "--litellm",
        action="store_true",
        help=f"add the LiteLLM proxy as a peer (needs {LITELLM_VENV.relative_to(REPO)})",
    )
    parser.add_argument(
        "--install-litellm",
        action="store_true",
        help=f"create {LITELLM_VENV.relative_to(REPO)} with {LITELLM_SPEC} (a few minutes)",
    )
    parser.add_argument(
        "--python",
        default=gateway_python(),
        help="interpreter that runs the gateway (default: the project's .venv)",
    )
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for debugging"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the `with Launcher` blocks stop every child;
    # SIGINT is re-armed because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.install_litellm:
            install_litellm(LITELLM_VENV, LITELLM_SPEC)
            if not args.litellm:
                return 0
        if args.workers != 1 and not _serve_has_workers(args.python):
            print(
                f"bench: --workers {args.workers}: not supported yet "
                "(`switchyard serve` has no --workers option); nothing was measured",
                file=sys.stderr,
            )
            return 2
        if args.streaming:
            return streaming_mode(args)
        return throughput_mode(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


# Throughput ---------------------------------------------------------------------------


def throughput_mode(args: argparse.Namespace) -> int:
    wrk = find_tool("wrk", "wrk")
    nginx = find_tool("nginx", "nginx")
    info = machine_info(REPO, args.python, {"nginx": nginx, "wrk": wrk})
    plan_kw = {"duration_s": args.duration, "repeat": args.repeat}
    with Launcher(keep=args.keep_tmp) as launcher:
        upstream = launcher.start_nginx("upstream", configs.nginx_upstream_conf)
        proxy = launcher.start_nginx(
            "nginx-proxy",
            lambda d, p: configs.nginx_proxy_conf(d, p, upstream.port, streaming=False),
        )
        extras = configs.shadow_and_drift_hook(upstream.url, args.shadow_sample, args.drift_sample)
        if args.experiment:
            extras = replace(extras, yaml=extras.yaml + configs.EXPERIMENT_YAML)
        policy = configs.gateway_policy(upstream.url, extras)
        gateway = launcher.start_gateway(
            policy,
            args.python,
            _worker_args(args.workers),
            compiled=_compiled_mode(args),
            tree=args.tree,
        )
        _check_gateway(gateway)
        path = configs.CHAT_PATH
        systems = [
            System("direct", "direct (upstream nginx)", upstream.url + path, None),
            System("nginx", "nginx proxy", proxy.url + path, proxy),
            System("gateway", "switchyard gateway", gateway.url + path, gateway),
        ]
        for rate in args.tracing or ():
            traced = _start_traced_gateway(launcher, args, policy, rate)
            systems.append(System(traced.name, _traced_label(rate), traced.url + path, traced))
        if args.fleet:
            fleet = _start_fleet_gateway(launcher, args, policy)
            systems.append(System(fleet.name, "gateway, fleet wiring", fleet.url + path, fleet))
        if args.admission:
            for limits, label in (
                (False, "gateway, API key"),
                (True, "gateway, key limits + flow"),
            ):
                admitted = _start_admission_gateway(launcher, args, policy, limits=limits)
                systems.append(System(admitted.name, label, admitted.url + path, admitted))
        truth: Service | None = None
        if args.ground_truth:
            truth = launcher.start_gateway(
                policy + configs.GROUND_TRUTH_YAML,
                args.python,
                _worker_args(args.workers),
                name="gateway-ground-truth",
                compiled=_compiled_mode(args),
                tree=args.tree,
            )
            _check_gateway(truth)
            label = "gateway, ground truth capture"
            systems.append(System(truth.name, label, truth.url + path, truth))
        if args.compare_tree is not None:
            base = launcher.start_gateway(
                policy,
                args.python,
                _worker_args(args.workers),
                name="gateway-base",
                compiled=_compiled_mode(args),
                tree=args.compare_tree,
            )
            _check_gateway(base)
            label = f"gateway @ {_commit_of(args.compare_tree)}"
            systems.append(System("gateway-base", label, base.url + path, base))
        if args.with_python:
            pure = launcher.start_gateway(
                policy, args.python, _worker_args(args.workers), name="gateway-py", compiled="0"
            )
            _check_gateway(pure)
            systems.append(System("gateway-py", "gateway, Python path", pure.url + path, pure))
        if args.floor:
            floor = launcher.start_floor(args.python, upstream.url)
            systems.append(
                System("floor", "Python floor (uvloop+httptools)", floor.url + path, floor)
            )
        if args.compiled_floor:
            built = launcher.start_floor(args.python, upstream.url, compiled=True)
            label = "floor, compiled (mypyc)"
            systems.append(System("floor-compiled", label, built.url + path, built))
        if args.litellm:
            litellm = launcher.start_litellm(LITELLM_VENV, upstream.url)
            systems.append(System("litellm", "litellm proxy", litellm.url + path, litellm))
        pinned = args.pin and len(os.sched_getaffinity(0)) >= 2
        if pinned:
            proxy_core, load_core = sorted(os.sched_getaffinity(0))[:2]
            pin(process_tree(upstream.popen.pid), {load_core})
            for system in systems:
                if system.proxy is not None:
                    pin(process_tree(system.proxy.popen.pid), {proxy_core})
        plan = Plan(
            wrk=wrk,
            script=write_script(launcher.root),
            connections=args.connections,
            warmup_s=0 if args.quick else 1,
            latency_runs=not args.quick,
            client_cores=frozenset({load_core}) if pinned else None,
            **plan_kw,
        )
        print(
            f"bench: {len(systems)} systems, {args.repeat} rounds of {args.duration} s "
            f"(c={args.connections}{'' if args.quick else ' and c=1'})",
            file=sys.stderr,
            flush=True,
        )
        run_rounds(systems, upstream, plan)
        results = {s.name: summarize(s) for s in systems}
        _rss_after_a_scrape(systems, results)
        ratios = add_comparisons(systems, results)
        status, metrics = get(gateway.admin_url or "", "/metrics")
        split = variant_split(metrics.decode(), configs.ROUTE) if status == 200 else {}
        dataplane = _dataplane(metrics.decode()) if status == 200 else "?"
        captured = _ground_truth_counts(truth) if truth is not None else None
    total = sum(split.values())
    result: dict[str, Any] = {
        "kind": "throughput",
        "machine": {**info, "loadavg_at_end": list(os.getloadavg())},
        "config": {
            "connections": args.connections,
            "duration_s": args.duration,
            "repeat": args.repeat,
            "quick": args.quick,
            "latency_runs": not args.quick,
            "wrk_threads": 1,
            "pinned": (
                f"proxies on core {proxy_core}; upstream and wrk on core {load_core}"
                if pinned
                else None
            ),
            "users": configs.USERS,
            "request_bytes": len(configs.REQUEST_BODY),
            "response_bytes": len(configs.RESPONSE_BODY),
        },
        "gateway": {
            "commit": _commit_of(args.tree),
            "experiment": args.experiment,
            "fleet": _FLEET_SUMMARY if args.fleet else None,
            "admission": _ADMISSION_SUMMARY if args.admission else None,
            "ground_truth": configs.GROUND_TRUTH_YAML.strip() if args.ground_truth else None,
            "ground_truth_counts": captured,
            "compare_tree": _commit_of(args.compare_tree) if args.compare_tree else None,
            "tracing": _tracing_summary(args.tracing),
            "policy": policy,
            "policy_summary": POLICY_SUMMARY,
            "shadow": extras.shadow,
            "drift": extras.drift,
            "workers": args.workers,
            "dataplane": dataplane,
            "variant_requests": split,
            "variant_share": {k: v / total for k, v in split.items()} if total else {},
        },
        "systems": results,
        "ratios": ratios,
    }
    default = (
        "bench-tracing-latest.json"
        if args.tracing
        else "bench-admission-latest.json"
        if args.admission
        else "bench-ground-truth-latest.json"
        if args.ground_truth
        else "bench-fleet-latest.json"
        if args.fleet or args.compare_tree
        else "bench-latest.json"
    )
    _write(result, args.output or RESULTS / default)
    print(report.throughput_table(result))
    if args.markdown:
        print("\n" + report.throughput_table(result, markdown=True))
    failed = 0
    for system in systems:
        if system.name.startswith("gateway"):
            errors = results[system.name]["non2xx_total"]
            if errors:
                print(f"bench: {system.name} answered {errors} non-2xx responses", file=sys.stderr)
                failed = 1
    return failed


def _rss_after_a_scrape(systems: list[System], results: dict[str, dict[str, Any]]) -> None:
    """Each gateway row's RSS again after one scrape of its admin `/metrics`.

    `rss_mb` is a worker nobody has scraped. A production worker is scraped (the HPA
    reads its metrics): the exposition of every counter is rendered, and whatever
    the scrape loads stays. So this is the figure an SRE sees; both are reported.
    """
    for system in systems:
        service = system.proxy
        if service is None or not service.admin_url:
            continue
        status, _ = get(service.admin_url, "/metrics")
        if status != 200:
            raise BenchError(f"{system.name}: GET /metrics answered {status}")
        pids = process_tree(service.popen.pid)
        results[system.name]["rss_scraped_mb"] = rss_bytes(pids) / 2**20


# Fleet and before/after rows -----------------------------------------------------------

_FLEET_SUMMARY = (
    "--feedback-store redis (local redis-server), --fleet-secret-file, --stats-source "
    "prometheus (local Prometheus scraping the admin port every 5 s), "
    "--drift-worker-address udp (to a sink that discards them)"
)


def _start_fleet_gateway(launcher: Launcher, args: argparse.Namespace, policy: str) -> Service:
    """The bench gateway again with everything a fleet replica is configured with.

    None of it is on the request path by design (feedback claims are made by feedback
    requests, statistics are read by the controller and admin, drift rows are sent in
    batches): this row is there to show it.
    """
    redis = launcher.start_redis()
    secret = launcher.root / "fleet-secret"
    secret.write_text(os.urandom(32).hex())
    sink = free_port()  # drift datagrams to a discarding sink, as the other gateway rows
    admin = free_port()
    prometheus = launcher.start_prometheus([f"127.0.0.1:{admin}"])
    extra = [
        *_worker_args(args.workers),
        "--admin-port",
        str(admin),
        "--feedback-store",
        redis.url,
        "--fleet-secret-file",
        str(secret),
        "--stats-source",
        "prometheus",
        "--prometheus-url",
        prometheus.url,
        "--drift-worker-address",
        f"udp://127.0.0.1:{sink}",
    ]
    fleet = launcher.start_gateway(
        policy,
        args.python,
        extra,
        name="gateway-fleet",
        compiled=_compiled_mode(args),
        tree=args.tree,
    )
    _check_gateway(fleet)
    return fleet


_ADMISSION_SUMMARY = (
    "gateway-keys: --api-keys with one key, no limits; gateway-admission: the same key "
    "with rpm, tpm, day and month budget limits far above the load and a price table, "
    "and the route's `flow: {max_in_flight: 100000}` (never saturated)"
)


def _start_admission_gateway(
    launcher: Launcher, args: argparse.Namespace, policy: str, *, limits: bool
) -> Service:
    """The bench gateway again behind API keys: with `limits`, the key has rpm, tpm
    and budget limits and prices and the route a `flow` block, none of them ever
    reached (what admission costs a request it admits); without, the plain key check
    (the baseline of that comparison)."""
    name = "gateway-admission" if limits else "gateway-keys"
    keys = launcher.root / f"keys-{name}.json"
    key: dict[str, object] = {"name": "bench", "key": configs.API_KEY}
    table: dict[str, object] = {"keys": [key]}
    if limits:
        key["tenant"] = "bench"
        key["limits"] = [
            {"route": "*", "rpm": 10**9, "tpm": 10**12, "budget": {"day": 1e8, "month": 1e8}}
        ]
        table["prices"] = [{"route": "*", "prompt": 1.0, "completion": 2.0}]
        policy += "flow: {max_in_flight: 100000}\n"
    keys.write_text(json.dumps(table))
    admitted = launcher.start_gateway(
        policy,
        args.python,
        [*_worker_args(args.workers), "--api-keys", str(keys)],
        name=name,
        compiled=_compiled_mode(args),
        tree=args.tree,
    )
    _check_gateway(admitted)
    return admitted


def _ground_truth_counts(service: Service) -> dict[str, Any]:
    """Predictions the ground-truth row captured, and capture failures by reason (the
    first should be every 2xx it served, the second empty)."""
    status, metrics = get(service.admin_url or "", "/metrics")
    counts: dict[str, Any] = {"captured": 0.0, "failed": {}}
    if status != 200:
        return counts
    for family in text_string_to_metric_families(metrics.decode()):
        for sample in family.samples:
            if sample.name == "switchyard_ground_truth_predictions_captured_total":
                counts["captured"] += sample.value
            elif sample.name == "switchyard_ground_truth_capture_failures_total":
                reason = sample.labels.get("reason", "?")
                counts["failed"][reason] = counts["failed"].get(reason, 0.0) + sample.value
    return counts


def _commit_of(tree: Path) -> str:
    found = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "?"


# Tracing rows -------------------------------------------------------------------------


def _traced_name(rate: float) -> str:
    return f"gateway-trace-{rate:g}"


def _traced_label(rate: float) -> str:
    return f"gateway, tracing {rate:.0%}" if rate >= 0.01 else f"gateway, tracing {rate:g}"


def _start_traced_gateway(
    launcher: Launcher, args: argparse.Namespace, policy: str, rate: float
) -> Service:
    """The bench gateway again, sampling `rate` of its requests into OTLP spans.

    The spans go to an nginx that answers every POST /v1/traces with 200 (a collector
    that never pushes back), so the row costs what the gateway's own tracing costs:
    the sampling decision, the span records, the encoding and the export requests.
    Its access log stays off, as in the other rows.
    """
    name = _traced_name(rate)
    sink = launcher.start_nginx(f"otlp-sink-{rate:g}", configs.nginx_otlp_sink_conf)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{rate:g}",
        "OTEL_SERVICE_NAME": "switchyard-bench",
        "OTEL_BSP_SCHEDULE_DELAY": "1000",
    }
    traced = launcher.start_gateway(
        policy,
        args.python,
        _worker_args(args.workers),
        name=name,
        compiled=_compiled_mode(args),
        env=env,
    )
    _check_gateway(traced)
    return traced


def _tracing_summary(rates: Sequence[float] | None) -> dict[str, Any]:
    if not rates:
        return {"rows": {}}
    return {
        "sampler": "parentbased_traceidratio",
        "exporter": "OTLP/HTTP protobuf to a local nginx answering 200",
        "rows": {_traced_name(rate): rate for rate in rates},
    }


def _dataplane(metrics_text: str) -> str:
    """`compiled` or `python`: what the gateway's /metrics says its request path is."""
    for line in metrics_text.splitlines():
        if line.startswith("switchyard_build_info{") and 'dataplane="' in line:
            return line.split('dataplane="', 1)[1].split('"', 1)[0]
    return "?"


def _check_gateway(gateway: Service) -> None:
    # Measure nothing until the gateway demonstrably routes through the policy.
    status, headers, body = post(gateway.url, configs.CHAT_PATH, configs.REQUEST_BODY)
    if status != 200 or "x-switchyard-variant" not in headers:
        raise BenchError(
            f"the gateway did not route the bench request (HTTP {status}, headers "
            f"{sorted(headers)}): {body[:500]!r}\n{gateway.log_tail()}"
        )


# Streaming ----------------------------------------------------------------------------


def streaming_mode(args: argparse.Namespace) -> int:
    nginx = find_tool("nginx", "nginx")
    info = machine_info(REPO, args.python, {"nginx": nginx})
    streams = 20 if args.quick else args.streams
    warmup = 3 if args.quick else 20
    runs: list[dict[str, Any]] = []
    with Launcher(keep=args.keep_tmp) as launcher:
        sim = launcher.start_simulator(
            args.python, "--tokens", str(max(args.stream_tokens)), "--latency-ms", "0"
        )
        proxy = launcher.start_nginx(
            "nginx-proxy", lambda d, p: configs.nginx_proxy_conf(d, p, sim.port, streaming=True)
        )
        extras = configs.shadow_and_drift_hook(sim.url, args.shadow_sample, args.drift_sample)
        gateway = launcher.start_gateway(
            configs.gateway_policy(sim.url, extras),
            args.python,
            _worker_args(args.workers),
            compiled=_compiled_mode(args),
        )
        _check_gateway(gateway)
        # The Python floor relays a stream's reads as they come: what this runtime
        # allows a streaming relay, beside what the gateway does.
        floor = launcher.start_floor(args.python, sim.url)
        proxies: dict[str, Service | None] = {
            "direct": None,
            "nginx": proxy,
            "gateway": gateway,
            "floor": floor,
        }
        urls = {"direct": sim.url, "nginx": proxy.url, "gateway": gateway.url, "floor": floor.url}
        for tokens in args.stream_tokens:
            print(f"bench: {streams} streams x {tokens} tokens", file=sys.stderr, flush=True)
            series = run_streams(proxies, urls, tokens, streams, warmup)
            direct = series["direct"]
            systems: dict[str, dict[str, Any]] = {}
            for name, s in series.items():
                entry: dict[str, Any] = {
                    "events": s.events,
                    "ttfb_p50_ms": s.ms("ttfb_ns", 50),
                    "ttfb_p99_ms": s.ms("ttfb_ns", 99),
                    "total_p50_ms": s.ms("total_ns", 50),
                    "total_p99_ms": s.ms("total_ns", 99),
                    "total_mean_ms": statistics.fmean(x.total_ns for x in s.samples) / 1e6,
                }
                if name != "direct":
                    entry["added_ttfb_ms"] = entry["ttfb_p50_ms"] - direct.ms("ttfb_ns", 50)
                    added_total_ms = entry["total_p50_ms"] - direct.ms("total_ns", 50)
                    entry["added_total_ms"] = added_total_ms
                    entry["added_per_chunk_us"] = added_total_ms * 1000 / s.events
                if s.cpu_s is not None:
                    entry["cpu_us_per_stream"] = s.cpu_s * 1e6 / len(s.samples)
                    entry["cpu_us_per_chunk"] = entry["cpu_us_per_stream"] / s.events
                systems[name] = entry
            runs.append({"tokens": tokens, "streams": streams, "systems": systems})
    result: dict[str, Any] = {
        "kind": "streaming",
        "machine": {**info, "loadavg_at_end": list(os.getloadavg())},
        "config": {"streams": streams, "warmup": warmup, "tokens": list(args.stream_tokens)},
        "gateway": {"shadow": extras.shadow, "drift": extras.drift, "workers": args.workers},
        "runs": runs,
    }
    _write(result, args.output or RESULTS / "bench-streaming-latest.json")
    print(report.streaming_table(result))
    if args.markdown:
        print("\n" + report.streaming_table(result, markdown=True))
    return 0


# LiteLLM, workers, helpers ------------------------------------------------------------


def install_litellm(venv: Path, spec: str) -> None:
    """A separate venv, so LiteLLM's many dependencies never touch the gateway's."""
    print(f"bench: installing {spec} into {venv} (takes a few minutes)", file=sys.stderr)
    started = time.monotonic()
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", spec]
    if subprocess.run(pip).returncode != 0:
        raise BenchError(f"pip install {spec} failed (see above)")
    print(f"bench: LiteLLM installed in {time.monotonic() - started:.0f} s", file=sys.stderr)


def _serve_has_workers(python: str) -> bool:
    done = subprocess.run(
        [python, "-m", "gateway", "serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--workers" in done.stdout


def _compiled_mode(args: argparse.Namespace) -> str:
    """SWITCHYARD_COMPILED for the gateway row."""
    return "require" if args.dataplane == "compiled" else "0"


def _worker_args(workers: int) -> list[str]:
    # Passed only when asked for, so the bench keeps working with a serve that lacks it.
    return [] if workers == 1 else ["--workers", str(workers)]


def _write(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)  # a reader never sees half a file
    print(f"bench: results written to {path}", file=sys.stderr)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _fraction_list(text: str) -> tuple[float, ...]:
    rates = tuple(_fraction(part) for part in text.split(",") if part.strip())
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: rates above 0, up to 1, comma-separated")
    return rates


def _token_list(text: str) -> tuple[int, ...]:
    return tuple(_positive(part) for part in text.split(",") if part.strip())
