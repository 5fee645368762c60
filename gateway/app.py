"""Build a gateway process from settings, run it, and drain it on SIGTERM.

One factory (`Gateway`) builds every long-lived object of the process and passes each
its dependencies: no module-level state, so tests build as many gateways as they like.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from gateway import COMPILED, __version__
from gateway.admin.lazy import LazyAdmin
from gateway.admin.probes import Probes
from gateway.controlplane.backends.context import ContextWatcher
from gateway.controlplane.backends.health import HealthChecker
from gateway.controlplane.backends.load import LoadWatcher
from gateway.controlplane.k8s.client import KubeAccess
from gateway.controlplane.k8s.discovery import EndpointDiscovery
from gateway.controlplane.policy.loader import PolicyError
from gateway.controlplane.policy.reload import PolicyReloader, ReloadResult
from gateway.controlplane.registry.client import MlflowRegistry, RegistryConfig
from gateway.controlplane.registry.resolve import RegistryResolver
from gateway.dataplane.auth import ApiKeys, KeysFileError
from gateway.dataplane.feedback.fleet import FeedbackConfigError, FeedbackFleet
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.plane import DataPlane
from gateway.dataplane.quota import Quotas
from gateway.dataplane.snapshot import SnapshotRef
from gateway.drift.feed import DriftFeed, drift_settings_problem
from gateway.native.loader import ENV as COMPILED_ENV
from gateway.observability.logs import configure_logging
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing.config import TraceConfigError
from gateway.observability.tracing.sampler import SAMPLERS
from gateway.observability.tracing.setup import Tracing
from gateway.quota.options import add_quota_options, open_sync, quota_settings
from gateway.quota.options import settings_problem as quota_problem
from gateway.rollout.build import build_controller
from gateway.rollout.cli import add_rollout_options
from gateway.settings import Settings, from_env
from gateway.stats.sources import options_problem

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from gateway.controlplane.k8s.configmap import ConfigMapPolicies
    from gateway.dataplane.grpc.front import GrpcFront

log = logging.getLogger("switchyard")


class Gateway:
    """One gateway process: data plane, admin API and policy reloader."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.metrics.info_labels = {"version": __version__, "dataplane": COMPILED.label}
        self.health = HealthRegistry(self.metrics)
        self.resolver = _resolver(settings, self.metrics)
        # Kubernetes is reached only if a ConfigMap or a k8s:// pool needs it (lazily).
        self.kube = KubeAccess(settings.kubeconfig)
        self.discovery = EndpointDiscovery(self.kube, self.metrics, log)
        self.configmap: ConfigMapPolicies | None = None
        if settings.policy_configmap:
            # The ConfigMap watcher is imported only when policies come from one.
            from gateway.controlplane.k8s.configmap import ConfigMapPolicies

            self.configmap = ConfigMapPolicies(
                settings.policy_configmap, self.kube, self.metrics, log
            )
        self.reloader = PolicyReloader(
            self.configmap or settings.policies,
            self.metrics,
            self.health,
            log,
            resolver=self.resolver,
            discovery=self.discovery,
            file_roots=settings.file_roots,
        )
        self.drift = DriftFeed(settings, self.metrics, lambda: self.reloader.policies)
        self.stopping = asyncio.Event()
        self.port = settings.port
        self.admin_port = settings.admin_port
        self.grpc_port = settings.grpc_port
        self._tasks: set[asyncio.Task[object]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        # The loop keeps only weak references to tasks: hold them until they finish.
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, ready: asyncio.Event | None = None) -> int:
        settings = self.settings
        _check_admin_exposure(settings)
        loop = asyncio.get_running_loop()
        try:
            if self.configmap is not None:
                await self.configmap.start()
            snapshot = await self.reloader.load()
        except PolicyError as exc:
            for problem in exc.problems:
                log.error("policy: %s", problem)
            log.error(
                "refusing to start: the policies in %s are invalid",
                self.reloader.source.description,
            )
            await self._close_registry()
            return 2
        try:
            auth = (
                ApiKeys(settings.api_keys_file, self.metrics.api_keys, Quotas(self.metrics.quota))
                if settings.api_keys_file
                else None
            )
        except KeysFileError as exc:
            log.error("refusing to start: %s", exc)
            await self._close_registry()
            return 2
        try:
            tracing = Tracing.build(settings, self.metrics.tracing, loop, version=__version__)
        except TraceConfigError as exc:
            log.error("refusing to start: %s", exc)
            await self._close_registry()
            return 2
        try:
            feedback = FeedbackFleet.open(settings)  # secret and claims store; no network
        except FeedbackConfigError as exc:
            log.error("refusing to start: %s", exc)
            await self._close_registry()
            return 2
        ref = SnapshotRef(snapshot)
        self.metrics.policy_hash = snapshot.version
        self.metrics.policy_routes = len(snapshot.routes)
        self.metrics.loop_tasks = lambda: len(asyncio.all_tasks(loop))
        plane = DataPlane(
            settings,
            ref,
            self.metrics,
            self.health,
            loop,
            tap=self.drift.tap,
            auth=auth,
            tracer=tracing.tracer,
            access_log=tracing.access_log,
        )
        plane.use_feedback(feedback.ids, feedback.claims)
        self.metrics.info_labels.update(
            feedback_store=feedback.claims.description, fleet_secret=feedback.secret_kind
        )
        self.port = await plane.listen(settings.host, settings.port, reuse_port=settings.reuse_port)
        grpc_front: GrpcFront | None = None
        if settings.grpc_port is not None and settings.grpc_port >= 0:
            # Imported only when enabled: grpcio costs ~10 MB of RSS per process.
            from gateway.dataplane.grpc.front import GrpcFront

            grpc_front = GrpcFront(plane)
            try:
                self.grpc_port = await grpc_front.listen(
                    settings.host, settings.grpc_port, reuse_port=settings.reuse_port
                )
            except OSError as exc:
                plane.stop_listening()
                log.error("refusing to start: %s", exc)
                await feedback.aclose()
                await self._close_registry()
                return 2

        rollouts = build_controller(
            settings,
            self.reloader,
            self.metrics,
            plane.exposures,
            self.kube,
            resolver=self.resolver,
            logger=log,
        )

        def admin_app() -> Starlette:
            # Imported (in a worker thread, by LazyAdmin) at the first admin request that
            # is not a probe or a scrape: a gateway nobody asks does not load the admin API.
            from gateway.admin.app import build_admin_app

            return build_admin_app(
                plane,
                self.reloader,
                settings.admin_token,
                webhook_secret=settings.registry_webhook_secret,
                drift_dir=settings.drift_dir,
                rollouts=rollouts,
            )

        admin = LazyAdmin(
            admin_app,
            settings.admin_host,
            settings.admin_port,
            preload=("gateway.admin.app",),
            probes=Probes(plane).answer,
        )
        if not await admin.start():
            plane.stop_listening()
            if grpc_front is not None:
                await grpc_front.drain(0)
            log.error(
                "admin API could not start on %s:%d", settings.admin_host, settings.admin_port
            )
            await rollouts.aclose()
            await feedback.aclose()
            await self._close_registry()
            return 2
        self.admin_port = admin.port
        background: list[asyncio.Task[None]] = []
        if self.configmap is not None:

            def reload_configmap(reason: str) -> Coroutine[Any, Any, ReloadResult]:
                return self.reloader.reload(ref, reason)

            background.append(loop.create_task(self.configmap.follow(reload_configmap)))
        elif settings.watch_interval > 0:
            background.append(loop.create_task(self.reloader.watch(ref, settings.watch_interval)))
        background.append(loop.create_task(self.reloader.follow_discovery(ref)))
        if self.resolver is not None:
            follow = self.reloader.follow_registry(ref, settings.registry_poll_interval)
            background.append(loop.create_task(follow))
        self.drift.start(ref)
        tracing.start()
        background.append(loop.create_task(LoadWatcher(ref).run()))  # idle without opt-ins
        background.append(loop.create_task(ContextWatcher(ref).run()))  # pickers' context
        background.append(loop.create_task(HealthChecker(ref, self.metrics).run()))
        background.append(loop.create_task(rollouts.run(ref)))  # idle without rollouts
        background.append(loop.create_task(feedback.check_store()))  # a warning, or nothing
        quota_sync = open_sync(settings, auth, self.metrics.quota)  # --quota-store leases
        if quota_sync is not None:
            background.append(loop.create_task(quota_sync.run()))
            log.info("%s", quota_sync.describe())
        elif settings.quota_store:
            log.warning("--quota-store is set but --api-keys is not: no limits to share")

        def reload_signal() -> None:
            self._spawn(self.reloader.reload(ref, "SIGHUP"))

        loop.add_signal_handler(signal.SIGHUP, reload_signal)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        log.log(
            logging.WARNING if COMPILED.stale else logging.INFO,
            "request path: %s (%s)",
            "compiled" if COMPILED.active else "Python",
            COMPILED.reason,
        )
        log.info("%s", tracing.describe())
        log.info("%s", feedback.describe())
        log.info(
            "switchyard %s serving %d routes (policy %s) on http://%s:%d; admin and /metrics "
            "on http://%s:%d",
            __version__,
            len(snapshot.routes),
            snapshot.version,
            settings.host,
            self.port,
            settings.admin_host,
            self.admin_port,
        )
        # Before the line that says so: the collection pauses the loop once, and a
        # client told to go ahead should not meet that pause.
        settle_startup_memory()
        # tests/procs.py and the supervisor parse this line; gRPC comes last, optional.
        grpc_at = f" grpc {settings.host}:{self.grpc_port}" if grpc_front is not None else ""
        print(
            f"switchyard listening on http://{settings.host}:{self.port} "
            f"admin http://{settings.admin_host}:{self.admin_port}{grpc_at}",
            flush=True,
        )
        if ready is not None:
            ready.set()
        await self.stopping.wait()

        # Drain: readiness fails first (so load balancers stop sending), then the
        # listener closes and in-flight requests get up to drain_timeout to finish.
        log.info("draining: readiness now fails; closing listeners in %.1fs", settings.drain_delay)
        plane.draining = True
        if settings.drain_delay > 0:
            await asyncio.sleep(settings.drain_delay)
        if grpc_front is not None:
            # Both fronts drain at once, under the same deadline.
            cut, _ = await asyncio.gather(
                plane.drain(settings.drain_timeout), grpc_front.drain(settings.drain_timeout)
            )
        else:
            cut = await plane.drain(settings.drain_timeout)
        log.info("drained; %d requests were still in flight at the deadline", cut)
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if quota_sync is not None:
            await quota_sync.aclose()  # unused leases back to the fleet
        await self.drift.stop()
        await tracing.aclose()
        await rollouts.aclose()
        await feedback.aclose()
        await self._close_registry()
        await admin.stop()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        return 0

    async def _close_registry(self) -> None:
        if self.resolver is not None:
            await self.resolver.aclose()
        await self.discovery.aclose()
        await self.kube.aclose()


def _resolver(settings: Settings, metrics: GatewayMetrics) -> RegistryResolver | None:
    if not settings.registry_uri:
        return None
    config = RegistryConfig.from_settings(settings)
    return RegistryResolver(
        MlflowRegistry(config), metrics, log, cache_path=settings.registry_cache
    )


def _check_admin_exposure(settings: Settings) -> None:
    try:
        loopback = ipaddress.ip_address(settings.admin_host).is_loopback
    except ValueError:
        loopback = settings.admin_host == "localhost"
    if not loopback and not settings.admin_token:
        raise SystemExit(
            f"refusing to expose the admin API on {settings.admin_host} without a token: "
            "set --admin-token or SWITCHYARD_ADMIN_TOKEN"
        )


def settle_startup_memory() -> None:
    """Once a worker is ready to serve: collect start-up's garbage, freeze what stays,
    and hand the freed heap back to the system.

    Everything built so far (modules, policies, the snapshot) lives as long as the
    process: moved out of the collector's view, a full collection no longer walks a few
    hundred thousand objects mid-traffic (a pause of tens of milliseconds at a request's
    p99). The objects requests create are collected as before. Collected first, or the
    cycles start-up left (schema building, parsing) would be frozen for good; then
    glibc's `malloc_trim` returns the free pages at the heap's top and in its arenas
    (together under a megabyte of a worker's RSS, measured; skipped where the C library
    has none).
    """
    gc.collect()
    gc.freeze()
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # only here: a worker needs it once

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return
    trim(0)


def run_gateway(settings: Settings) -> int:
    """Run a gateway until SIGTERM/SIGINT, on uvloop (a supervisor when workers > 1)."""
    import uvloop

    if COMPILED.required and not COMPILED.active:
        print(
            f"switchyard: {COMPILED_ENV}=require, but the compiled request path is not in use:"
            f" {COMPILED.reason}",
            file=sys.stderr,
        )
        return 2
    problem = options_problem(settings)
    if problem is not None:
        print(f"switchyard: refusing to start: {problem}", file=sys.stderr)
        return 2
    problem = quota_problem(settings)
    if problem is not None:
        print(f"switchyard: refusing to start: {problem}", file=sys.stderr)
        return 2
    problem = drift_settings_problem(settings)
    if problem is not None:
        print(f"switchyard: {problem}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        from gateway.supervisor import run_supervisor

        _check_admin_exposure(settings)
        return run_supervisor(settings)

    configure_logging(settings.log_level)
    return uvloop.run(Gateway(settings).run())


def settings_from_args(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "grpc_port": getattr(args, "grpc_port", None),
        "admin_host": args.admin_host,
        "admin_port": args.admin_port,
        "policies": tuple(args.policies) if args.policies else None,
        "watch_interval": args.watch_interval,
        "admin_token": args.admin_token,
        "log_level": args.log_level,
        "access_log": True if args.access_log or args.access_log_file else None,
        "access_log_file": args.access_log_file,
        "trace_endpoint": args.trace_endpoint,
        "trace_sampler": args.trace_sampler,
        "trace_sampler_arg": args.trace_sampler_arg,
        "trace_service_name": args.trace_service_name,
        "drain_timeout": args.drain_timeout,
        "drain_delay": args.drain_delay,
        "seed": args.seed,
        "workers": args.workers,
        "limits__max_body_bytes": args.max_body_bytes,
        "api_keys_file": getattr(args, "api_keys", None),
        "shadow_log": getattr(args, "shadow_log", None),
        "registry_uri": args.registry_uri,
        "registry_poll_interval": args.registry_poll_interval,
        "registry_timeout": args.registry_timeout,
        "registry_cache": args.registry_cache,
        "drift_dir": getattr(args, "drift_dir", None),
        "drift_worker": False if getattr(args, "no_drift_worker", False) else None,
        "drift_worker_address": getattr(args, "drift_worker_address", None),
        "drift_status_url": getattr(args, "drift_status_url", None),
        "file_roots": tuple(getattr(args, "file_roots", None) or ()) or None,
        "rollout_dir": getattr(args, "rollout_dir", None),
        "rollout_lease": getattr(args, "rollout_lease", None),
        "stats_source": getattr(args, "stats_source", None),
        "prometheus_url": getattr(args, "prometheus_url", None),
        "prometheus_selector": getattr(args, "prometheus_selector", None),
        "stats_timeout": getattr(args, "stats_timeout", None),
        "feedback_store": getattr(args, "feedback_store", None),
        "fleet_secret_file": getattr(args, "fleet_secret_file", None),
        # `switchyard demo` shares these options but not the Kubernetes ones.
        "policy_configmap": getattr(args, "policy_configmap", None),
        "kubeconfig": getattr(args, "kubeconfig", None),
        **quota_settings(args),
    }
    return from_env().with_overrides(**values)


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="data plane address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="data plane port (default 8080)")
    parser.add_argument(
        "--grpc-port",
        type=int,
        help="KServe v2 gRPC port (GRPCInferenceService; default 8082, 0 picks one, "
        "-1 serves no gRPC)",
    )
    parser.add_argument("--admin-host", help="admin API and /metrics address (default 127.0.0.1)")
    parser.add_argument("--admin-port", type=int, help="admin API port (default 8081)")
    parser.add_argument(
        "--policies",
        nargs="+",
        metavar="PATH",
        help="policy files or directories (default: policies)",
    )
    parser.add_argument(
        "--watch-interval",
        type=float,
        metavar="S",
        help="seconds between policy file checks, 0 to disable (default 1)",
    )
    parser.add_argument("--admin-token", help="bearer token required by /admin/* endpoints")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="one JSON line per request (route, variant, status, timings, tokens, trace "
        "id; never headers or bodies) to stderr, or to --access-log-file",
    )
    parser.add_argument(
        "--access-log-file",
        metavar="FILE",
        help="write the access log to FILE (implies --access-log), rotated at "
        "SWITCHYARD_ACCESS_LOG_MAX_BYTES into FILE.1..FILE.N (SWITCHYARD_ACCESS_LOG_BACKUPS)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        metavar="S",
        help="longest wait for in-flight requests on SIGTERM (default 30)",
    )
    parser.add_argument(
        "--drain-delay",
        type=float,
        metavar="S",
        help="seconds readiness fails before listeners close (default 0)",
    )
    parser.add_argument("--seed", type=int, help="seed the routing RNG (reproducible splits)")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="data-plane processes sharing the port (SO_REUSEPORT); default 1",
    )
    parser.add_argument("--max-body-bytes", type=int, help="request body limit (default 16 MiB)")
    parser.add_argument(
        "--api-keys",
        metavar="FILE",
        help="require client API keys listed in this JSON file, each with its own rate "
        "limit (re-read when it changes); default: no keys",
    )
    parser.add_argument(
        "--shadow-log",
        metavar="FILE",
        help="write shadow comparisons to this JSON-lines file (rotated to FILE.1 at "
        "SWITCHYARD_SHADOW_LOG_MAX_BYTES); default: off",
    )
    registry = parser.add_argument_group(
        "model registry",
        "Resolve models:/NAME@ALIAS targets through an MLflow tracking server. Credentials "
        "come from SWITCHYARD_REGISTRY_TOKEN or SWITCHYARD_REGISTRY_USERNAME/PASSWORD; "
        "webhooks are verified with SWITCHYARD_REGISTRY_WEBHOOK_SECRET.",
    )
    registry.add_argument("--registry-uri", metavar="URL", help="e.g. http://mlflow:5000")
    registry.add_argument(
        "--registry-poll-interval",
        type=float,
        metavar="S",
        help="seconds between alias re-resolutions (default 5)",
    )
    registry.add_argument(
        "--registry-timeout", type=float, metavar="S", help="per registry request (default 2)"
    )
    registry.add_argument(
        "--registry-cache",
        metavar="FILE",
        help="keep the last resolutions in FILE, so a restart without the registry serves",
    )
    add_rollout_options(parser)
    add_feedback_options(parser)
    add_quota_options(parser)
    add_tracing_options(parser)


def add_feedback_options(parser: argparse.ArgumentParser) -> None:
    feedback = parser.add_argument_group(
        "feedback",
        "POST /v1/feedback across workers and replicas: tracked routes' responses carry "
        "ids signed with a fleet secret (SWITCHYARD_FLEET_SECRET holds the secret itself), "
        "which any process sharing it attributes; the first feedback per id is claimed in "
        "a store they share.",
    )
    feedback.add_argument(
        "--feedback-store",
        metavar="STORE",
        help="memory (one process; the default), sqlite:PATH (one machine; the default "
        "under --workers: sqlite:.state/feedback/claims.sqlite) or redis://HOST:PORT/DB "
        "(replicas; needs a fleet secret)",
    )
    feedback.add_argument(
        "--fleet-secret-file",
        metavar="PATH",
        help="the fleet secret (at least 16 bytes), the same for every replica; default: "
        "SWITCHYARD_FLEET_SECRET, else one made at start (per process, or per supervisor)",
    )


def add_tracing_options(parser: argparse.ArgumentParser) -> None:
    tracing = parser.add_argument_group(
        "tracing",
        "OpenTelemetry traces over OTLP/HTTP (protobuf). The standard OTEL_* variables "
        "apply (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, "
        "OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*, ...); these flags win over theirs.",
    )
    tracing.add_argument(
        "--trace-endpoint",
        metavar="URL",
        help="POST spans here, e.g. http://otel-collector:4318/v1/traces (default: "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces; "
        "neither: tracing off)",
    )
    tracing.add_argument(
        "--trace-sampler",
        choices=SAMPLERS,
        help="which requests are traced (default OTEL_TRACES_SAMPLER, else parentbased_always_on)",
    )
    tracing.add_argument(
        "--trace-sampler-arg",
        metavar="RATIO",
        help="the traceidratio samplers' share of new traces, 0..1 (OTEL_TRACES_SAMPLER_ARG)",
    )
    tracing.add_argument(
        "--trace-service-name", metavar="NAME", help="service.name (OTEL_SERVICE_NAME)"
    )


def add_drift_options(parser: argparse.ArgumentParser) -> None:
    drift = parser.add_argument_group(
        "drift",
        "Policies with a `drift` block sample live inputs into windows that a drift worker "
        "process (started here; Evidently, needs the drift extra) compares with reference data.",
    )
    drift.add_argument(
        "--drift-dir",
        metavar="DIR",
        help="drift worker state: status, HTML reports, saved windows (default .state/drift)",
    )
    drift.add_argument(
        "--no-drift-worker",
        action="store_true",
        help="do not start the drift worker (run `switchyard drift-worker` yourself)",
    )
    drift.add_argument(
        "--drift-worker-address",
        metavar="udp://HOST:PORT",
        help="send drift samples to the fleet's one drift worker there (`switchyard "
        "drift-worker --listen`) and start none here",
    )
    drift.add_argument(
        "--drift-status-url",
        metavar="URL",
        help="the admin drift endpoints read that worker's HTTP API here (its --http, "
        "e.g. http://switchyard-drift:9301) instead of the local --drift-dir",
    )
    drift.add_argument(
        "--file-root",
        action="append",
        dest="file_roots",
        metavar="DIR",
        help="a folder policies may name files in, besides their own (repeatable)",
    )


def add_kubernetes_options(parser: argparse.ArgumentParser) -> None:
    kube = parser.add_argument_group(
        "Kubernetes",
        "Policies from a ConfigMap (watched), and k8s://NAMESPACE/SERVICE:PORT pools "
        "(EndpointSlices). In a pod the service account is used; elsewhere --kubeconfig, "
        "$KUBECONFIG or ~/.kube/config. Needs the k8s extra: pip install 'switchyard[k8s]'.",
    )
    kube.add_argument(
        "--policy-configmap",
        metavar="NAMESPACE/NAME",
        help="read the policies from this ConfigMap's *.yaml keys instead of --policies",
    )
    kube.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig for the Kubernetes API")


def _serve(args: argparse.Namespace) -> int:
    return run_gateway(settings_from_args(args))


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Every option also reads SWITCHYARD_<OPTION> "
        "from the environment (e.g. SWITCHYARD_PORT=8080).",
    )
    add_serve_options(serve)
    add_drift_options(serve)
    add_kubernetes_options(serve)
    serve.set_defaults(handler=_serve)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_gateway(from_env()))
