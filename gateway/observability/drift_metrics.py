"""The drift metrics, declared once; part of `GatewayMetrics` (see `metrics.py`).

Two sources, both plain data read at scrape time:

- this process's tap and sender (`DriftCounters`, `sampling_families`): samples sent to
  the drift worker and samples dropped, by reason. Summed across `--workers` like
  every counter.
- the drift worker's status (`worker_families`): drift share, per-column scores,
  windows, evaluations, actions, what it received and lost. On one machine every
  gateway process reads the same status file (`DriftCounters.status`), so the
  supervisor merges these by maximum, not sum (`WORKER_SOURCED`). A worker on another
  machine (`DriftCounters.remote`, one per fleet) serves them on its own `/metrics`
  (`gateway.drift.api`) and the gateways leave them out: R replicas repeating one
  worker's counters would make every sum over pods R times too large.

Label values come from the policies (route, feature column names) and the resolved
model versions, never from client input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.observability.exposition import CounterMetricFamily, GaugeMetricFamily, Metric
from gateway.observability.labeled_window_metrics import (
    WORKER_SOURCED_LABELS,
    labeled_window_families,
)

# The worker writes its status every second; a status older than this means it is gone.
WORKER_STALE_AFTER = 10.0

# Sample names whose values are one fact seen by every process (the worker's status).
WORKER_SOURCED = frozenset(
    {
        "switchyard_drift_share",
        "switchyard_drift_detected",
        "switchyard_drift_column_score",
        "switchyard_drift_column_drifted",
        "switchyard_drift_window_size",
        "switchyard_drift_last_evaluation_timestamp_seconds",
        "switchyard_drift_evaluation_seconds",
        "switchyard_drift_evaluations_total",
        "switchyard_drift_samples_received_total",
        "switchyard_drift_worker_samples_dropped_total",
        "switchyard_drift_episodes_total",
        "switchyard_drift_actions_total",
        "switchyard_drift_worker_up",
        "switchyard_drift_worker_restarts_total",
        "switchyard_drift_worker_datagrams_received_total",
        "switchyard_drift_worker_datagrams_lost_total",
        "switchyard_drift_worker_senders",
        *WORKER_SOURCED_LABELS,  # the labeled windows' (same worker status)
    }
)


class RemoteWorker(Protocol):
    """A drift worker read over HTTP (`gateway.drift.remote`)."""

    @property
    def url(self) -> str: ...

    async def status(self) -> Mapping[str, Any]:
        """The worker's status now; raises `gateway.drift.remote.WorkerUnreachable`."""
        ...

    async def report(self, route: str, version: str, kind: str = "data") -> bytes | None:
        """A window's HTML report (`kind` data or labels), None if there is none;
        raises as `status`."""
        ...


@dataclass(eq=False, slots=True)
class DriftCounters:
    """What this process counts of drift sampling, and where the worker's status is."""

    sent: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, version)
    # (route, version) -> samples the request path found no room for (buffer full).
    buffer_full: dict[tuple[str, str], int] = field(default_factory=dict)
    # (route, version, reason) -> samples lost after the buffer: extract_failed,
    # route_removed, too_large, backlog_full, send_failed, shutdown (see `sender.py`).
    dropped: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # The worker's status: a local file's reader, or (a worker elsewhere) `remote`.
    status: Callable[[], Mapping[str, Any] | None] | None = None
    remote: RemoteWorker | None = None


def _versions(status: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    routes = status.get("routes")
    if not isinstance(routes, Mapping):
        return
    for route, entry in sorted(routes.items()):
        versions = entry.get("versions") if isinstance(entry, Mapping) else None
        if isinstance(versions, Mapping):
            for version, data in sorted(versions.items()):
                if isinstance(data, Mapping):
                    yield route, version, data


def drift_families(counters: DriftCounters) -> Iterator[Metric]:
    """Every drift metric family of a gateway process (empty families too: they
    document themselves); the worker's from its local status file, if any."""
    yield from sampling_families(counters)
    yield from worker_families(counters.status() if counters.status is not None else None)


def sampling_families(counters: DriftCounters) -> Iterator[Metric]:
    """What this gateway process sampled and sent, or dropped."""
    rv = ["route", "version"]
    sent = CounterMetricFamily(
        "switchyard_drift_samples",
        "Requests sampled for drift and sent to the drift worker (rows for tensor batches).",
        labels=rv,
    )
    dropped = CounterMetricFamily(
        "switchyard_drift_samples_dropped",
        "Drift samples this gateway never sent to the drift worker, by reason: buffer_full "
        "(on the request path), backlog_full (the worker was down or behind for longer than "
        "the sender's backlog holds), extract_failed, route_removed, too_large, send_failed, "
        "shutdown.",
        labels=[*rv, "reason"],
    )
    for (route, version), n in list(counters.sent.items()):
        sent.add_metric([route, version], n)
    for (route, version), n in list(counters.buffer_full.items()):
        dropped.add_metric([route, version, "buffer_full"], n)
    for (route, version, reason), n in list(counters.dropped.items()):
        dropped.add_metric([route, version, reason], n)
    yield from (sent, dropped)


def worker_families(status: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The drift worker's metrics, from its status (None: no worker reported yet)."""
    rv = ["route", "version"]
    share = GaugeMetricFamily(
        "switchyard_drift_share",
        "Share of the window's columns that drifted at the last evaluation.",
        labels=rv,
    )
    detected = GaugeMetricFamily(
        "switchyard_drift_detected",
        "1 when the last evaluation found drift (share of drifted columns >= drift_share).",
        labels=rv,
    )
    score = GaugeMetricFamily(
        "switchyard_drift_column_score",
        "Drift score of each column at the last evaluation (a p-value for ks, chisquare, "
        "z: low means drift; a distance for psi, wasserstein, jensenshannon: high means drift).",
        labels=[*rv, "column", "method"],
    )
    column_drifted = GaugeMetricFamily(
        "switchyard_drift_column_drifted",
        "1 when the column drifted at the last evaluation.",
        labels=[*rv, "column"],
    )
    window = GaugeMetricFamily(
        "switchyard_drift_window_size", "Samples in the rolling window now.", labels=rv
    )
    evaluated = GaugeMetricFamily(
        "switchyard_drift_last_evaluation_timestamp_seconds",
        "Unix time of the window's last evaluation.",
        labels=rv,
    )
    duration = GaugeMetricFamily(
        "switchyard_drift_evaluation_seconds",
        "Time the last evaluation took (Evidently report and HTML).",
        labels=rv,
    )
    evaluations = CounterMetricFamily(
        "switchyard_drift_evaluations",
        "Window evaluations by outcome: ok, error.",
        labels=[*rv, "outcome"],
    )
    received = CounterMetricFamily(
        "switchyard_drift_samples_received",
        "Samples the drift worker received into the window.",
        labels=rv,
    )
    worker_dropped = CounterMetricFamily(
        "switchyard_drift_worker_samples_dropped",
        "Samples gateways sent that the drift worker put in no window, by reason: "
        "unknown_route (no drift block for the route in the gateways' config), no_config "
        "(more rows came before their config than the worker holds), shutdown (the worker "
        "stopped before their config came), lost (in datagrams that never arrived: a gap "
        "in a sender's numbers), malformed and wire_version (datagrams it could not read, "
        "or of another release; counted per datagram), unauthenticated and bad_tag "
        "(datagrams without a tag, or with a wrong one, at a worker that has the fleet "
        "secret; counted per datagram). Route and version are empty where the worker "
        "cannot know them.",
        labels=[*rv, "reason"],
    )
    episodes = CounterMetricFamily(
        "switchyard_drift_episodes", "Drift episodes that began.", labels=rv
    )
    actions = CounterMetricFamily(
        "switchyard_drift_actions",
        "Drift actions by kind (save_window, kubeflow, webhook) and outcome: ok, failed, "
        "suppressed (cooldown), skipped (a Kubeflow run not started while its window is not "
        "saved; tried again).",
        labels=["route", "action", "outcome"],
    )
    up = GaugeMetricFamily(
        "switchyard_drift_worker_up", "1 while the drift worker reports in (status file fresh)."
    )
    restarts = CounterMetricFamily(
        "switchyard_drift_worker_restarts", "Times the drift worker process was started again."
    )
    datagrams = CounterMetricFamily(
        "switchyard_drift_worker_datagrams_received",
        "Datagrams the drift worker received from gateway processes (samples and configs).",
    )
    lost = CounterMetricFamily(
        "switchyard_drift_worker_datagrams_lost",
        "Datagrams gateway processes sent that the drift worker never received, from the "
        "gaps in each sender's numbers: lost on the network, dropped from the worker's full "
        "receive queue, or sent while no worker listened. The samples in them count as "
        'switchyard_drift_worker_samples_dropped_total{reason="lost"}.',
    )
    senders = GaugeMetricFamily(
        "switchyard_drift_worker_senders",
        "Gateway processes whose config reached the drift worker in the last 10 seconds.",
    )
    if status is not None:
        heartbeat = float(status.get("heartbeat", 0.0) or 0.0)
        up.add_metric([], 1.0 if time.time() - heartbeat < WORKER_STALE_AFTER else 0.0)
        restarts.add_metric([], max(0, int(status.get("generation", 1) or 1) - 1))
        for route, version, data in _versions(status):
            labels = [route, version]
            window.add_metric(labels, float(data.get("window", 0) or 0))
            received.add_metric(labels, float(data.get("received", 0) or 0))
            episodes.add_metric(labels, float(data.get("episodes", 0) or 0))
            for outcome, n in sorted((data.get("evaluations") or {}).items()):
                evaluations.add_metric([*labels, outcome], float(n))
            if data.get("evaluated_at") is None:
                continue
            share.add_metric(labels, float(data.get("share") or 0.0))
            detected.add_metric(labels, 1.0 if data.get("drifted") else 0.0)
            evaluated.add_metric(labels, float(data["evaluated_at"]))
            duration.add_metric(labels, float(data.get("duration_s") or 0.0))
            for column, result in sorted((data.get("columns") or {}).items()):
                method = str(result.get("method") or "")
                if result.get("score") is not None:
                    score.add_metric([*labels, column, method], float(result["score"]))
                column_drifted.add_metric([*labels, column], 1.0 if result.get("drifted") else 0.0)
        for drop in status.get("dropped") or []:
            if isinstance(drop, Mapping):
                worker_dropped.add_metric(
                    [
                        str(drop.get("route", "")),
                        str(drop.get("version", "")),
                        str(drop.get("reason", "")),
                    ],
                    float(drop.get("samples", 0) or 0),
                )
        routes = status.get("routes") or {}
        for route, entry in sorted(routes.items()):
            for action, outcomes in sorted((entry.get("actions") or {}).items()):
                for outcome, n in sorted(outcomes.items()):
                    actions.add_metric([route, action, outcome], float(n))
        ledger = status.get("senders")
        if isinstance(ledger, Mapping):
            counts = ledger.get("datagrams") or {}
            datagrams.add_metric([], float(counts.get("received", 0) or 0))
            lost.add_metric([], float(counts.get("lost", 0) or 0))
            senders.add_metric([], float(ledger.get("live", 0) or 0))
    yield from (share, detected, score, column_drifted, window, evaluated, duration)
    yield from (evaluations, received, worker_dropped, episodes, actions, up, restarts)
    yield from (datagrams, lost, senders)
    yield from labeled_window_families(status)
