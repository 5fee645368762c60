"""`switchyard demo`: the quick start. Simulated backends plus the gateway, one command.

The simulators run as child processes (as real backends would be separate servers) on
the ports the bundled `policies/demo.yaml` points at; the gateway runs in this process
and stops them on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass

from gateway.app import add_serve_options, run_gateway, settings_from_args


@dataclass(frozen=True)
class DemoBackend:
    name: str
    kind: str
    port: int
    extra: tuple[str, ...] = ()


DEMO_BACKENDS = (
    DemoBackend("champion", "openai", 9101, ("--latency-ms", "5", "--tokens", "24")),
    DemoBackend("challenger", "openai", 9102, ("--latency-ms", "8", "--tokens", "24")),
)


def start_backends(backends: tuple[DemoBackend, ...]) -> list[subprocess.Popen[str]]:
    procs: list[subprocess.Popen[str]] = []
    for b in backends:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "simulate",
                b.kind,
                "--port",
                str(b.port),
                "--name",
                b.name,
                *b.extra,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
    for b, proc in zip(backends, procs, strict=True):
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            stop_backends(procs)
            raise SystemExit(
                f"simulator '{b.name}' did not start on port {b.port} (is the port in use?)"
            )
        print(f"  backend {b.name:<11} {line}", flush=True)
    return procs


def stop_backends(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 5
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()


def _demo(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    print("switchyard demo: starting simulated backends", flush=True)
    procs = start_backends(DEMO_BACKENDS)
    base = f"http://{settings.host}:{settings.port}"
    print(
        "\nTry it:\n"
        f"  curl -s {base}/v1/models\n"
        f"  curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\\n"
        '       -H \'x-user-id: alice\' -d \'{"model":"chat","messages":'
        '[{"role":"user","content":"hi"}]}\' -i\n'
        f"  curl -s http://{settings.admin_host}:{settings.admin_port}/metrics"
        " | grep switchyard_requests\n"
        "  switchyard policy explain --route chat --header x-user-id=alice\n"
        "Edit policies/*.yaml while it runs: the gateway reloads on save. Ctrl-C stops.\n",
        flush=True,
    )
    try:
        return run_gateway(settings)
    finally:
        stop_backends(procs)


def add_demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the quick start: simulated backends and the gateway with policies/",
    )
    add_serve_options(demo)
    demo.set_defaults(handler=_demo)
