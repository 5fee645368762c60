"""Every metric the gateway exports, declared once.

The request path pays for metrics in single microseconds, so it never calls a metrics
client: it bumps plain integers and floats on objects it already holds (a
`RequestSeries` hangs off each compiled variant/endpoint pair), and a custom collector
turns them into metric families at scrape time (`gateway.observability.exposition`,
which renders them as Prometheus text or OpenMetrics). Label values come only
from compiled policy (route, variant, version, backend), never from client input, so
cardinality is bounded by the policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from gateway.observability.drift_metrics import DriftCounters, drift_families
from gateway.observability.exposition import (
    Collector,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    Registry,
)
from gateway.observability.flow_metrics import FlowCounters, flow_families
from gateway.observability.ground_truth_metrics import GroundTruthMetrics, ground_truth_families
from gateway.observability.histogram import Histogram
from gateway.observability.picker_metrics import PickerCounters, picker_families
from gateway.observability.quota_metrics import QuotaMetrics, quota_families
from gateway.observability.rollout_metrics import RolloutCounters, rollout_families
from gateway.observability.shadow_metrics import ShadowMetrics, shadow_families
from gateway.observability.trace_metrics import TraceCounters, trace_families

# Seconds. Dense below 10 ms because gateway overhead lives there; up to 5 min for
# long LLM streams.
DURATION_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
TOKEN_GAP_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
)
OVERHEAD_BUCKETS: tuple[float, ...] = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.05,
    0.1,
)


@dataclass(eq=False, slots=True)
class RequestSeries:
    """Counters for one (route, variant, version, backend) combination.

    `by_class[n]` counts responses with status n xx; index 0 counts requests that got
    no status at all (client went away first).
    """

    route: str
    variant: str
    version: str
    backend: str
    by_class: list[int] = field(default_factory=lambda: [0] * 6)
    duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    upstream: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    overhead: Histogram = field(default_factory=lambda: Histogram(OVERHEAD_BUCKETS))
    # LLM routes: streamed responses' time to first token and gaps between chunks, and
    # token counts from the backend's usage report.
    ttft: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(TOKEN_GAP_BUCKETS))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Upstream attempts on this series that failed (5xx, connect error, timeout, reset),
    # retried ones included: a rollout's error gate sees failures a fallback hid.
    failed_attempts: int = 0


@dataclass(eq=False, slots=True)
class RouteCounters:
    """Per-route counters that do not depend on which backend answered."""

    route: str
    retries: int = 0
    retries_denied: int = 0
    fallbacks: int = 0
    no_healthy: int = 0
    panic: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class EndpointGauges:
    """What `/metrics` reads of one backend endpoint's live state."""

    backend: str
    in_flight: Callable[[], int]
    ejected: Callable[[], bool]
    ejections: Callable[[], int]
    queued: Callable[[], int] = lambda: 0
    running: Callable[[], int] = lambda: 0
    kv_usage: Callable[[], float] = lambda: 0.0
    probe_down: Callable[[], bool] = lambda: False


@dataclass(eq=False, slots=True)
class AliasGauge:
    """What `/metrics` shows of one registry alias (`models:/model@alias`)."""

    model: str
    alias: str
    version: str = ""  # the version the registry last said; "" until it has answered
    stale: bool = True  # traffic may not follow the alias right now
    resolved_at: float = 0.0  # wall-clock time of the last successful lookup


@dataclass(frozen=True, slots=True)
class BackendPod:
    """The Kubernetes pod behind a discovered backend: labels for per-pod autoscaling."""

    namespace: str
    service: str
    pod: str


NO_POD = BackendPod("", "", "")
# Why a policy reload is held (gateway.controlplane.policy.diff.HoldReason): a bounded label set.
RELOAD_HOLD_REASONS = ("empty", "removes_routes")


class GatewayMetrics:
    """Holds the gateway's counters and renders them as metric families for a `Registry`.

    One instance per process, built by the app factory and passed to whoever counts.
    """

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str, str], RequestSeries] = {}
        self._routes: dict[str, RouteCounters] = {}
        self._endpoints: dict[str, EndpointGauges] = {}
        self.reloads: dict[str, int] = {"success": 0, "rejected": 0, "unchanged": 0, "held": 0}
        # Why the source's latest policies are held instead of applied (None: they are
        # not); one of RELOAD_HOLD_REASONS.
        self.reload_held: str | None = None
        self.policy_hash = ""
        self.policy_routes = 0
        self.unknown_route = 0
        self.bad_request = 0
        self.connections_open = 0
        self.connections_total = 0
        self.overflow = 0
        # Active health probes by (backend, outcome: ok | failed); backends come from
        # the policy, so the label set is bounded like every other.
        self.health_probes: dict[tuple[str, str], int] = {}
        self.info_labels: dict[str, str] = {}
        # Replaced wholesale by the registry resolver after each resolution.
        self.registry_aliases: dict[tuple[str, str], AliasGauge] = {}
        self.registry_problems: dict[str, int] = {}  # route -> variants with a problem
        self.registry_lookups: dict[str, int] = {"ok": 0, "not_found": 0, "error": 0}
        # Drift sampling of this process, and the drift worker's status (drift_metrics).
        self.drift = DriftCounters()
        # Shadow copies, their comparisons and the comparison log (shadow_metrics).
        self.shadow = ShadowMetrics()
        # Predictions captured and true labels joined with them (ground_truth_metrics).
        self.ground_truth = GroundTruthMetrics()
        # Progressive rollouts and A/B feedback (rollout_metrics; gateway.rollout).
        self.rollout = RolloutCounters()
        # Tracing and the access log (trace_metrics; gateway.observability.tracing).
        self.tracing = TraceCounters()
        # Kubernetes: what the control plane's watches report (see controlplane.kubewatch).
        self.kube_watch_restarts: dict[tuple[str, str], int] = {}  # (resource, reason)
        self.kube_synced: dict[str, bool] = {}  # resource -> list+watch is current
        self.kube_events = 0  # Kubernetes Events written (rejected ConfigMap policies)
        # Replaced wholesale by the reloader after each swap: the ready pods of every
        # k8s:// pool, and which pod each backend is (labels of the in-flight gauge).
        self.discovered: dict[str, int] = {}  # k8s:// pool -> ready endpoints
        self.backend_pods: dict[str, BackendPod] = {}
        # Backends of the serving snapshot; None until one is known. Endpoints that left
        # it (pods gone) stop being exported once idle, so pod churn cannot grow /metrics.
        self.active_backends: frozenset[str] | None = None
        # Client API keys (--api-keys): (key name, outcome) -> requests; "" names no key.
        self.api_keys: dict[tuple[str, str], int] = {}
        # Their quotas and budgets (quota_metrics; gateway.dataplane.quota).
        self.quota = QuotaMetrics()
        # Flow control of saturated pools (flow_metrics; gateway.dataplane.flow).
        self.flow = FlowCounters()
        # Scored endpoint picks (picker_metrics; gateway.dataplane.scorers).
        self.picker = PickerCounters()
        # Tasks alive on the process's event loop (set by the app): a leak shows here.
        self.loop_tasks: Callable[[], int] | None = None

    def series(self, route: str, variant: str, version: str, backend: str) -> RequestSeries:
        """Get or create the series for one label set (called by the compiler)."""
        key = (route, variant, version, backend)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = RequestSeries(route, variant, version, backend)
        return found

    def refused(self, code: str, status: int, route: str | None) -> None:
        """Count an error the gateway answered itself, before any backend (any front).

        An unknown route's `route` is the client's text: never a label value.
        """
        if code == "model_not_found" or (route is None and status == 404):
            self.unknown_route += 1
        elif route is not None:
            counts = self.route(route).errors_by_code
            counts[code] = counts.get(code, 0) + 1
        elif 400 <= status < 500:
            self.bad_request += 1

    def route(self, name: str) -> RouteCounters:
        found = self._routes.get(name)
        if found is None:
            found = self._routes[name] = RouteCounters(name)
        return found

    def track_endpoint(self, gauges: EndpointGauges) -> None:
        self._endpoints[gauges.backend] = gauges

    def collector(self) -> Collector:
        return _Collector(self)

    def registry(self) -> Registry:
        """A fresh registry holding only this gateway's metrics."""
        return Registry([self.collector()])

    # Rendering -------------------------------------------------------------------

    def families(self) -> Iterator[Metric]:
        labels = ["route", "variant", "version", "backend"]
        requests = CounterMetricFamily(
            "switchyard_requests",
            "Requests proxied, by route, variant, resolved version, backend and status class.",
            labels=[*labels, "status_class"],
        )
        duration = HistogramMetricFamily(
            "switchyard_request_duration_seconds",
            "Time from a complete client request to the last byte relayed.",
            labels=labels,
        )
        upstream = HistogramMetricFamily(
            "switchyard_upstream_duration_seconds",
            "Time from sending to the backend to its last response byte.",
            labels=labels,
        )
        overhead = HistogramMetricFamily(
            "switchyard_gateway_overhead_seconds",
            "Time the gateway itself added: request duration minus upstream duration.",
            labels=labels,
        )
        ttft = HistogramMetricFamily(
            "switchyard_time_to_first_token_seconds",
            "Streamed LLM responses: request sent to the backend until its first body chunk.",
            labels=labels,
        )
        itl = HistogramMetricFamily(
            "switchyard_inter_token_latency_seconds",
            "Streamed LLM responses: gap between consecutive events as they arrive "
            "(one token each on vLLM).",
            labels=labels,
        )
        prompt = CounterMetricFamily(
            "switchyard_prompt_tokens",
            "Prompt tokens reported by the backends' usage (LLM routes).",
            labels=labels,
        )
        completion = CounterMetricFamily(
            "switchyard_completion_tokens",
            "Completion tokens reported by the backends' usage (LLM routes).",
            labels=labels,
        )
        failed = CounterMetricFamily(
            "switchyard_upstream_failed_attempts",
            "Upstream attempts that failed (5xx, connect error, timeout, reset), retried "
            "ones included.",
            labels=labels,
        )
        for s in list(self._series.values()):
            lv = [s.route, s.variant, s.version, s.backend]
            for cls, count in enumerate(s.by_class):
                if count:
                    requests.add_metric([*lv, f"{cls}xx" if cls else "none"], count)
            if s.failed_attempts:
                failed.add_metric(lv, s.failed_attempts)
            if s.duration.counts:
                duration.add_metric(lv, s.duration.buckets(), s.duration.total)
                upstream.add_metric(lv, s.upstream.buckets(), s.upstream.total)
                overhead.add_metric(lv, s.overhead.buckets(), s.overhead.total)
            if any(s.ttft.counts):
                ttft.add_metric(lv, s.ttft.buckets(), s.ttft.total)
                itl.add_metric(lv, s.itl.buckets(), s.itl.total)
            if s.prompt_tokens or s.completion_tokens:
                prompt.add_metric(lv, s.prompt_tokens)
                completion.add_metric(lv, s.completion_tokens)
        yield from (requests, duration, upstream, overhead, ttft, itl, prompt, completion)
        yield failed

        retries = CounterMetricFamily(
            "switchyard_retries", "Retries sent to another endpoint or variant.", labels=["route"]
        )
        denied = CounterMetricFamily(
            "switchyard_retries_denied",
            "Retries not attempted because the route's retry budget was spent.",
            labels=["route"],
        )
        fallbacks = CounterMetricFamily(
            "switchyard_fallbacks", "Requests served by a fallback variant.", labels=["route"]
        )
        panic = CounterMetricFamily(
            "switchyard_panic_routed",
            "Requests sent to a passively ejected endpoint because every endpoint of the "
            "variant and its fallbacks was ejected (panic routing, as Envoy does).",
            labels=["route"],
        )
        errors = CounterMetricFamily(
            "switchyard_gateway_errors",
            "Error responses the gateway itself produced, by route and error code.",
            labels=["route", "code"],
        )
        for r in list(self._routes.values()):
            retries.add_metric([r.route], r.retries)
            denied.add_metric([r.route], r.retries_denied)
            fallbacks.add_metric([r.route], r.fallbacks)
            panic.add_metric([r.route], r.panic)
            for code, count in list(r.errors_by_code.items()):
                errors.add_metric([r.route, code], count)
        yield from (retries, denied, fallbacks, panic, errors)

        # The k8s_* labels name the pod behind a k8s:// endpoint ("" for plain URLs), so
        # Prometheus Adapter can map the gauge onto pods: per-replica autoscaling.
        in_flight = GaugeMetricFamily(
            "switchyard_backend_in_flight",
            "Requests in flight per backend endpoint (the HPA signal).",
            labels=["backend", "k8s_namespace", "k8s_service", "k8s_pod"],
        )
        ejected = GaugeMetricFamily(
            "switchyard_backend_ejected",
            "1 while passive outlier detection keeps the endpoint out of rotation.",
            labels=["backend"],
        )
        ejections = CounterMetricFamily(
            "switchyard_backend_ejections",
            "Times an endpoint was ejected by outlier detection.",
            labels=["backend"],
        )
        queue = GaugeMetricFamily(
            "switchyard_backend_queue_depth",
            "Requests the backend reports queued (vLLM num_requests_waiting; variants with "
            "load_metrics), from every client: a GPU-autoscaling signal.",
            labels=["backend"],
        )
        running = GaugeMetricFamily(
            "switchyard_backend_running",
            "Requests the backend reports running (vLLM num_requests_running; variants "
            "with load_metrics), from every client.",
            labels=["backend"],
        )
        kv = GaugeMetricFamily(
            "switchyard_backend_kv_cache_usage",
            "KV-cache use the backend reports, 0..1 (variants with load_metrics).",
            labels=["backend"],
        )
        probe_down = GaugeMetricFamily(
            "switchyard_backend_probe_down",
            "1 while failing active health probes keep the endpoint out of rotation.",
            labels=["backend"],
        )
        probes = CounterMetricFamily(
            "switchyard_health_probes",
            "Active health probes of backend endpoints, by outcome: ok, failed.",
            labels=["backend", "outcome"],
        )
        for (backend, outcome), count in sorted(self.health_probes.items()):
            probes.add_metric([backend, outcome], count)
        active, pods = self.active_backends, self.backend_pods
        for g in list(self._endpoints.values()):
            busy = g.in_flight()
            if active is not None and g.backend not in active and not busy:
                continue
            pod = pods.get(g.backend, NO_POD)
            in_flight.add_metric([g.backend, pod.namespace, pod.service, pod.pod], busy)
            ejected.add_metric([g.backend], 1.0 if g.ejected() else 0.0)
            ejections.add_metric([g.backend], g.ejections())
            queue.add_metric([g.backend], g.queued())
            running.add_metric([g.backend], g.running())
            kv.add_metric([g.backend], g.kv_usage())
            probe_down.add_metric([g.backend], 1.0 if g.probe_down() else 0.0)
        yield from (in_flight, ejected, ejections, queue, running, kv, probe_down, probes)

        reloads = CounterMetricFamily(
            "switchyard_policy_reloads", "Policy reloads by outcome.", labels=["outcome"]
        )
        for outcome, count in self.reloads.items():
            reloads.add_metric([outcome], count)
        held = GaugeMetricFamily(
            "switchyard_policy_reload_held",
            "1 while a policy reload is held instead of applied because it would remove "
            "serving routes nobody confirmed removing, by reason: empty (the new policies "
            "define no routes), removes_routes (they drop some).",
            labels=["reason"],
        )
        for reason in RELOAD_HOLD_REASONS:
            held.add_metric([reason], 1.0 if self.reload_held == reason else 0.0)
        info = InfoMetricFamily("switchyard_policy", "The policy set now serving.", labels=["hash"])
        info.add_metric([self.policy_hash], {"routes": str(self.policy_routes)})
        unknown = CounterMetricFamily(
            "switchyard_unknown_route_requests",
            "Requests naming a model or path no route serves.",
        )
        unknown.add_metric([], self.unknown_route)
        bad = CounterMetricFamily(
            "switchyard_bad_requests", "Requests rejected as malformed (4xx by the gateway)."
        )
        bad.add_metric([], self.bad_request)
        overflow = CounterMetricFamily(
            "switchyard_upstream_overflow",
            "Requests refused because a backend's connection limit was reached.",
        )
        overflow.add_metric([], self.overflow)
        conns = GaugeMetricFamily(
            "switchyard_client_connections", "Client connections open on the data plane."
        )
        conns.add_metric([], self.connections_open)
        build = InfoMetricFamily("switchyard_build", "Gateway build information.")
        build.add_metric([], self.info_labels)
        yield from (reloads, held, info, unknown, bad, overflow, conns, build)
        keys = CounterMetricFamily(
            "switchyard_api_key_requests",
            "Requests checked against client API keys, by key name and outcome: accepted, "
            "rate_limited, missing, unknown (the last two with an empty key name).",
            labels=["key", "outcome"],
        )
        for (name, outcome), count in sorted(self.api_keys.items()):
            keys.add_metric([name, outcome], count)
        tasks = GaugeMetricFamily(
            "switchyard_event_loop_tasks",
            "asyncio tasks alive in the gateway process (steady under steady load).",
        )
        if self.loop_tasks is not None:
            tasks.add_metric([], self.loop_tasks())
        yield from (keys, tasks)
        yield from quota_families(self.quota)
        yield from flow_families(self.flow)
        yield from picker_families(self.picker)
        yield from self._registry_families()
        yield from drift_families(self.drift)
        yield from shadow_families(self.shadow)
        yield from ground_truth_families(self.ground_truth)
        yield from rollout_families(self.rollout)
        yield from trace_families(self.tracing)
        yield from self._kubernetes_families()

    def _registry_families(self) -> Iterator[Metric]:
        version = GaugeMetricFamily(
            "switchyard_registry_alias_version",
            "Model version a registry alias pointed at on its last successful lookup.",
            labels=["model", "alias"],
        )
        stale = GaugeMetricFamily(
            "switchyard_registry_stale",
            "1 while traffic may not follow the alias: lookups failing or alias gone (the "
            "last resolved version keeps serving), or its new version cannot be served.",
            labels=["model", "alias"],
        )
        age = GaugeMetricFamily(
            "switchyard_registry_resolution_age_seconds",
            "Seconds since the alias was last resolved successfully.",
            labels=["model", "alias"],
        )
        now = time.time()
        for g in list(self.registry_aliases.values()):
            labels = [g.model, g.alias]
            if g.version.isdigit():
                version.add_metric(labels, float(g.version))
            stale.add_metric(labels, 1.0 if g.stale else 0.0)
            if g.resolved_at:
                age.add_metric(labels, max(0.0, now - g.resolved_at))
        problems = GaugeMetricFamily(
            "switchyard_registry_problems",
            "Variants of the route whose registry target cannot be served as the registry "
            "says now (see GET /admin/routes for why).",
            labels=["route"],
        )
        for route, count in sorted(self.registry_problems.items()):
            problems.add_metric([route], count)
        lookups = CounterMetricFamily(
            "switchyard_registry_lookups",
            "Registry lookups by outcome: ok, not_found, error.",
            labels=["outcome"],
        )
        for outcome, count in self.registry_lookups.items():
            lookups.add_metric([outcome], count)
        yield from (version, stale, age, problems, lookups)

    def _kubernetes_families(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "switchyard_kubernetes_watch_restarts",
            "Kubernetes watches started again, by resource and reason: closed (the API "
            "server ended it), gone (410: history compacted, relisted), error (dropped or "
            "refused; retried with backoff).",
            labels=["resource", "reason"],
        )
        for (resource, reason), count in sorted(self.kube_watch_restarts.items()):
            restarts.add_metric([resource, reason], count)
        synced = GaugeMetricFamily(
            "switchyard_kubernetes_watch_synced",
            "1 while the list+watch of the resource is current, 0 while reconnecting.",
            labels=["resource"],
        )
        for resource, ok in sorted(self.kube_synced.items()):
            synced.add_metric([resource], 1.0 if ok else 0.0)
        events = CounterMetricFamily(
            "switchyard_kubernetes_events",
            "Kubernetes Events written (a rejected ConfigMap policy names its problems).",
        )
        events.add_metric([], self.kube_events)
        discovered = GaugeMetricFamily(
            "switchyard_discovery_endpoints",
            "Ready endpoints of each k8s:// pool, from its Service's EndpointSlices.",
            labels=["pool"],
        )
        for pool, count in sorted(self.discovered.items()):
            discovered.add_metric([pool], count)
        yield from (restarts, synced, events, discovered)


class _Collector:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics.families())
