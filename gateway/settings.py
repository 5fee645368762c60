"""Process settings: one frozen object built from defaults, environment and CLI flags.

Every knob has an environment variable `SWITCHYARD_<NAME>` (upper-case field name), so
the same image runs anywhere; CLI flags win over the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Limits:
    """Protections of the client-facing HTTP/1.1 server (413, 431, 408 when exceeded)."""

    max_header_count: int = 100
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout: float = 10.0  # whole head must arrive within this (slowloris)
    body_timeout: float = 60.0  # whole body must arrive within this
    keepalive_timeout: float = 75.0  # idle client connection is closed after this
    max_pipelined: int = 16  # requests queued behind the one being served
    # Largest SSE event or NDJSON line the gateway holds while translating a stream
    # between protocols (a backend that never ends its line must not grow memory).
    max_stream_chunk_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    max_connections: int = 1024  # per endpoint; past it requests get 503 (circuit breaker)
    max_idle: int = 256  # idle keep-alive connections kept per endpoint
    idle_timeout: float = 30.0  # idle upstream connections are closed after this


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    # The KServe v2 gRPC front (GRPCInferenceService) on `host`: 0 picks a free port,
    # a negative port or None serves no gRPC.
    grpc_port: int | None = 8082
    policies: tuple[str, ...] = ("policies",)
    watch_interval: float = 1.0  # seconds between policy file checks; 0 disables
    admin_token: str | None = None
    log_level: str = "info"
    access_log: bool = False
    drain_timeout: float = 30.0
    drain_delay: float = 0.0  # seconds readiness fails before listeners close
    seed: int | None = None  # fixes the routing RNG (tests, reproducible demos)
    workers: int = 1  # data-plane processes; >1 runs a supervisor (gateway.supervisor)
    reuse_port: bool = False  # SO_REUSEPORT on the data-plane socket (set for workers)
    # MLflow tracking server whose registry resolves `models:/...` targets; None: none.
    registry_uri: str | None = None
    registry_token: str | None = None  # bearer token (env only: keep secrets off argv)
    registry_username: str | None = None  # basic auth, with registry_password
    registry_password: str | None = None
    registry_poll_interval: float = 5.0  # seconds between re-resolutions of every alias
    registry_timeout: float = 2.0  # per registry request
    registry_cache: str | None = None  # file keeping the last resolutions across restarts
    registry_webhook_secret: str | None = None  # HMAC secret of MLflow's webhooks
    # NAMESPACE/NAME of a ConfigMap whose *.yaml keys are the policies (instead of files).
    policy_configmap: str | None = None
    # Kubeconfig file for the Kubernetes API; None: in-cluster config, else ~/.kube/config.
    kubeconfig: str | None = None
    # Drift: the worker's folder (status, HTML reports, saved windows; its address derives
    # from it); whether this process starts the worker when a policy has a drift block
    # (false: it runs elsewhere, `switchyard drift-worker`); the request-path buffer.
    drift_dir: str = ".state/drift"
    drift_worker: bool = True
    drift_buffer: int = 4096  # samples held between two flushes (200 ms); more are dropped
    # One drift worker for a fleet (gateway/drift/channel.py): udp://HOST:PORT where
    # every process sends its samples (then none starts a worker here), and the worker's
    # HTTP API that the admin drift endpoints read (None: the local drift folder).
    drift_worker_address: str | None = None
    drift_status_url: str | None = None
    # Shadow traffic: copies in flight per process at most (beyond: dropped, counted);
    # how much of each answer (primary and shadow) is kept for the comparison; and the
    # comparison log, a JSON-lines file (None: off) rotated at `shadow_log_max_bytes`
    # into FILE.1, with the share of comparisons written to it.
    shadow_max_inflight: int = 256
    shadow_max_response_bytes: int = 256 * 1024
    shadow_log: str | None = None
    shadow_log_max_bytes: int = 64 * 1024 * 1024
    shadow_log_sample: float = 1.0
    # Folders policy files may name local files in (reference data, saved windows),
    # besides the policy file's own folder.
    file_roots: tuple[str, ...] = ()
    # Client API keys (JSON file; gateway/dataplane/auth.py): None lets every client in.
    api_keys_file: str | None = None
    # Their quotas and budgets across workers and replicas (gateway/quota/sync.py): a
    # Redis the processes take leases from (None: each process enforces every limit
    # itself), what to do while it is down (open: each keeps to its lease plus an even
    # share of what was left; closed: 503 once a lease is needed), seconds between
    # lease batches and per round trip, and how many processes share the fleet until
    # Redis has counted them (0: this replica's workers).
    quota_store: str | None = None
    quota_redis_down: str = "open"
    quota_sync_interval: float = 0.2
    quota_timeout: float = 0.5
    quota_processes: int = 0
    # Progressive rollouts: the folder of the local writer lock and (without a registry)
    # the state files; a Kubernetes Lease NAMESPACE/NAME for the writer (default in a
    # cluster: <pod namespace>/switchyard-rollouts). A/B feedback: how long and how many
    # served request ids are remembered for POST /v1/feedback.
    rollout_dir: str = ".state/rollouts"
    rollout_lease: str | None = None
    feedback_window: float = 3600.0
    feedback_capacity: int = 200_000
    # Feedback across workers and replicas (gateway/dataplane/feedback): where the first
    # feedback for a signed id is claimed (memory | sqlite:PATH | redis://HOST:PORT/DB;
    # None: memory, or a SQLite file under --workers), and the fleet secret that signs
    # feedback ids: the secret itself (env only: keep it off argv) or a file holding it.
    feedback_store: str | None = None
    fleet_secret: str | None = None
    fleet_secret_file: str | None = None
    # Where rollout gates, experiment reports and shadow agreement read their counts
    # (gateway/stats): "local" reads this process (a worker of --workers N reads its
    # supervisor's merged /metrics at `supervisor_admin`, which the supervisor sets);
    # "prometheus" queries `prometheus_url` over every replica it scrapes, narrowed by
    # `prometheus_selector` (label matchers, e.g. job="switchyard"). Each read gives up
    # after `stats_timeout` seconds.
    stats_source: str = "local"
    prometheus_url: str | None = None
    prometheus_selector: str | None = None
    stats_timeout: float = 2.0
    supervisor_admin: str | None = None
    # Tracing (gateway/observability/tracing): an OTLP/HTTP endpoint turns it on. Each of
    # these wins over its standard variable (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
    # OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG,
    # OTEL_SERVICE_NAME); headers, resource attributes, timeout and batching are read
    # from OTEL_* only (headers often hold credentials: keep them off argv).
    trace_endpoint: str | None = None
    trace_sampler: str | None = None
    trace_sampler_arg: str | None = None
    trace_service_name: str | None = None
    # The access log (`access_log`): JSON lines to this file (None: standard error),
    # rotated at `access_log_max_bytes` into FILE.1 .. FILE.<access_log_backups>.
    access_log_file: str | None = None
    access_log_max_bytes: int = 64 * 1024 * 1024
    access_log_backups: int = 5
    limits: Limits = field(default_factory=Limits)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)

    def with_overrides(self, **values: Any) -> Settings:
        """A copy with non-None values applied; nested fields by `limits__name`."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if value is None:
                continue
            if "__" in key:
                group, name = key.split("__", 1)
                nested.setdefault(group, {})[name] = value
            else:
                top[key] = value
        for group, vals in nested.items():
            top[group] = replace(getattr(self, group), **vals)
        return replace(self, **top)


def _coerce(raw: str, current: Any, name: str) -> Any:
    if isinstance(current, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"SWITCHYARD_{name.upper()}: expected true/false, got {raw!r}")
    if isinstance(current, tuple):
        return tuple(p for p in raw.split(",") if p)
    try:
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"SWITCHYARD_{name.upper()}: expected a number, got {raw!r}") from None
    if current is None and name == "seed":
        return int(raw)
    return raw


def from_env(env: dict[str, str] | None = None) -> Settings:
    """Settings from `SWITCHYARD_*` variables (`SWITCHYARD_LIMITS__MAX_BODY_BYTES` too)."""
    env = dict(os.environ if env is None else env)
    base = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        current = getattr(base, f.name)
        if f.name in ("limits", "upstream"):
            for sub in fields(current):
                raw = env.get(f"SWITCHYARD_{f.name.upper()}__{sub.name.upper()}")
                if raw is not None:
                    values[f"{f.name}__{sub.name}"] = _coerce(
                        raw, getattr(current, sub.name), sub.name
                    )
            continue
        raw = env.get(f"SWITCHYARD_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _coerce(raw, current, f.name)
    return base.with_overrides(**values)


def to_env(settings: Settings) -> dict[str, str]:
    """`SWITCHYARD_*` variables that `from_env` turns back into these settings.

    The supervisor hands its settings to worker processes this way: secrets stay off
    the command line, and every field (present and future) travels without a flag.
    """
    env: dict[str, str] = {}

    def put(name: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool):
            env[name] = "true" if value else "false"
        elif isinstance(value, tuple):
            env[name] = ",".join(str(v) for v in value)
        else:
            env[name] = str(value)

    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name == "grpc_port" and value is None:
            value = -1  # "off" must travel too: a missing variable means the default
        if f.name in ("limits", "upstream"):
            for sub in fields(value):
                put(f"SWITCHYARD_{f.name.upper()}__{sub.name.upper()}", getattr(value, sub.name))
        else:
            put(f"SWITCHYARD_{f.name.upper()}", value)
    return env
