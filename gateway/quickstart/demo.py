"""`switchyard demo`: the quick start. Simulated backends, a model registry and the
gateway, one command.

The simulators run as child processes (as real backends would be separate servers) on
the ports the demo's registry tags point at; a local MLflow server on SQLite holds the
registered models and aliases the bundled `policies/demo.yaml` routes by; the gateway
runs in this process and stops them all on exit. `--no-registry` skips MLflow and serves
`policies/no-registry/`, whose endpoints are written in the policy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.app import add_drift_options, add_serve_options, run_gateway, settings_from_args
from gateway.controlplane.registry.client import MlflowRegistry, RegistryConfig
from gateway.quickstart.mlflow_server import DEMO_MODELS, LocalMlflow, SeedModel, seed
from gateway.quickstart.rollout import (
    FAULTY,
    ROLLOUT_MODELS,
    ROLLOUT_POLICIES,
    ROUTE,
    DemoTraffic,
    try_it,
)
from gateway.settings import Settings

NO_REGISTRY_POLICIES = "policies/no-registry"


@dataclass(frozen=True)
class DemoBackend:
    name: str
    kind: str
    port: int
    extra: tuple[str, ...] = ()


DEMO_BACKENDS = (
    DemoBackend("champion", "openai", 9101, ("--latency-ms", "5", "--tokens", "24")),
    DemoBackend("challenger", "openai", 9102, ("--latency-ms", "8", "--tokens", "24")),
    # Route `fraud-detector` (KServe v2, HTTP and gRPC): a Triton-like server per model
    # version, champion weights (1) and challenger weights (2); gRPC on 912x.
    DemoBackend("triton-1", "kserve", 9111, ("--model-version", "1", "--grpc-port", "9121")),
    DemoBackend("triton-2", "kserve", 9112, ("--model-version", "2", "--grpc-port", "9122")),
    # Route `fraud-service` (JSON services): the same model as BentoML services.
    DemoBackend("bento-1", "bentoml", 9113, ("--model-version", "1")),
    DemoBackend("bento-2", "bentoml", 9114, ("--model-version", "2")),
)
# Drift: route `support` (policies/drift/) and a fake Kubeflow Pipelines API that records
# the retraining runs drift starts (`switchyard simulate kubeflow`).
DRIFT_POLICIES = "policies/drift"
DRIFT_BACKENDS = (DemoBackend("kubeflow", "kubeflow", 9103),)


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
    if args.no_registry and not args.policies:
        settings = settings.with_overrides(policies=(NO_REGISTRY_POLICIES,))
    backends: tuple[DemoBackend, ...] = DEMO_BACKENDS
    if not args.no_drift and not args.policies:
        settings = settings.with_overrides(policies=(*settings.policies, DRIFT_POLICIES))
        backends += DRIFT_BACKENDS
    if args.rollout:
        if args.no_registry:
            raise SystemExit("--rollout promotes by moving @champion: it needs the registry")
        settings = settings.with_overrides(policies=(*settings.policies, ROLLOUT_POLICIES))
        if args.rollout_dir is None:
            settings = settings.with_overrides(rollout_dir=str(Path(args.state_dir) / "rollouts"))
        backends += (DemoBackend(*FAULTY),)
    print("switchyard demo: starting simulated backends", flush=True)
    procs = start_backends(backends)
    mlflow: LocalMlflow | None = None
    traffic: DemoTraffic | None = None
    try:
        if not args.no_registry:
            settings, mlflow = _start_registry(args, settings)
        _print_try_it(settings)
        if args.rollout:
            traffic = DemoTraffic(f"http://{settings.host}:{settings.port}")
            traffic.start()
        return run_gateway(settings)
    finally:
        if traffic is not None:
            traffic.stop()
        if mlflow is not None:
            mlflow.stop()
        stop_backends(procs)


def _start_registry(
    args: argparse.Namespace, settings: Settings
) -> tuple[Settings, LocalMlflow | None]:
    state = Path(args.state_dir)
    mlflow = None
    if settings.registry_uri is None:
        mlflow = LocalMlflow(state / "mlflow", port=args.registry_port)
        print(f"switchyard demo: starting MLflow on {mlflow.uri} (data in {state}/mlflow)")
        print("  waiting for the registry", end="", flush=True)
        mlflow.start()
        try:
            mlflow.wait_ready()
        except BaseException:
            mlflow.stop()
            raise
        settings = settings.with_overrides(registry_uri=mlflow.uri)
        try:
            models = DEMO_MODELS + (ROLLOUT_MODELS if args.rollout else ())
            for line in asyncio.run(_seed(RegistryConfig.from_settings(settings), models)):
                print(f"  registry {line}", flush=True)
        except BaseException:
            mlflow.stop()
            raise
    if settings.registry_cache is None:
        settings = settings.with_overrides(registry_cache=str(state / "registry-cache.json"))
    return settings, mlflow


async def _seed(config: RegistryConfig, models: tuple[SeedModel, ...]) -> list[str]:
    async with MlflowRegistry(config) as registry:
        return await seed(registry, models)


def _print_try_it(settings: Settings) -> None:
    base = f"http://{settings.host}:{settings.port}"
    admin = f"http://{settings.admin_host}:{settings.admin_port}"
    lines = [
        "",
        "Try it:",
        f"  curl -s {base}/v1/models",
        f"  curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\",
        '       -H \'x-user-id: alice\' -d \'{"model":"chat","messages":'
        '[{"role":"user","content":"hi"}]}\' -i',
        f"  curl -s {admin}/metrics | grep switchyard_requests",
    ]
    if settings.registry_uri:
        registry = f" --registry-uri {settings.registry_uri}"
        lines += [
            f"  switchyard policy explain --route chat --header x-user-id=alice{registry}",
            f"  switchyard registry describe chat{registry}",
            f"  switchyard registry promote chat challenger{registry}   # traffic follows",
            f"  switchyard registry rollback chat{registry}",
            f"  curl -s {admin}/admin/routes",
        ]
    else:
        lines.append(
            "  switchyard policy explain --route chat --header x-user-id=alice "
            f"--policies {NO_REGISTRY_POLICIES}"
        )
    grpc = settings.grpc_port
    lines += [
        "Ollama clients (route chat-ollama: the chat models, translated to and from OpenAI):",
        f"  curl -s {base}/api/tags",
        f"  python -c \"import ollama; print(ollama.Client(host='{base}')"
        ".chat(model='chat-ollama', messages=[{'role':'user','content':'hi'}]).message.content)\"",
        f"Fraud scoring, KServe v2 (tritonclient.http on {settings.host}:{settings.port}"
        + (f", tritonclient.grpc on port {grpc}):" if grpc else "):"),
        f"  curl -s {base}/v2/models/fraud-detector/infer -H 'x-user-id: alice' -d \\",
        '       \'{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32",'
        '"data":[0.5,-1,2,0.25]}]}\'',
        "Fraud scoring, the same model as a BentoML service:",
        f"  curl -s {base}/services/fraud-service/classify -H 'content-type: application/json' \\",
        '       -d \'{"features":[0.5,-1,2,0.25],"customer_id":"c-42"}\'',
    ]
    if DRIFT_POLICIES in settings.policies:
        lines += [
            "Drift (route support; the drift worker loads Evidently in its own process):",
            f"  .venv/bin/python loadtests/drift_demo.py --gateway {base} --admin {admin}",
            f"  curl -s {admin}/admin/drift/support",
            f"  curl -s {admin}/metrics | grep switchyard_drift_share",
            f"  open {admin}/admin/drift/support/report.html   # the Evidently report",
            "  curl -s http://127.0.0.1:9103/apis/v2beta1/runs   # Kubeflow runs drift started",
        ]
    if ROLLOUT_POLICIES in settings.policies:
        lines += try_it(base, admin, settings.registry_uri or "")
    lines.append("Edit the policy files while it runs: the gateway reloads on save. Ctrl-C stops.")
    print("\n".join(lines) + "\n", flush=True)


def add_demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the quick start: simulated backends, an MLflow registry and the gateway",
    )
    add_serve_options(demo)
    add_drift_options(demo)
    quick = demo.add_argument_group("quick start")
    quick.add_argument(
        "--no-registry",
        action="store_true",
        help=f"no MLflow: serve {NO_REGISTRY_POLICIES}/ with endpoints written in the policy",
    )
    quick.add_argument(
        "--no-drift",
        action="store_true",
        help=f"leave out the drift demo ({DRIFT_POLICIES}/ and the fake Kubeflow on :9103)",
    )
    quick.add_argument(
        "--rollout",
        action="store_true",
        help=f"add the progressive rollout demo: route {ROUTE} ({ROLLOUT_POLICIES}/), a "
        "faulty challenger on :9105, and demo traffic with outcome feedback",
    )
    quick.add_argument(
        "--registry-port", type=int, default=5000, help="port of the local MLflow (default 5000)"
    )
    quick.add_argument(
        "--state-dir",
        default=".state",
        help="where MLflow's database and the registry cache live (default .state)",
    )
    demo.set_defaults(handler=_demo)
