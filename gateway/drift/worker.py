"""The drift worker process: receive samples, keep windows, evaluate, act, publish.

One per gateway on one machine (the supervisor or the single gateway process starts
it; see `manager.py`), or one per fleet (`switchyard drift-worker --listen udp://...`,
its own Deployment) fed by every replica, so every gateway process's samples meet in
the same windows and one drift makes one episode. Its loop:

- the socket reader checks each datagram's tag when the worker has the fleet secret
  (`channel.read`: one without a tag or with a wrong one is dropped, counted and logged
  once per sender a minute), accounts for every datagram it takes in the senders'
  ledger (numbers, gaps: `senders.py`) and appends incoming rows to the window of
  their (route, version);
  rows of a route it has no drift block for (yet: a worker that just started may get
  rows before the config) wait, bounded, for their sender's next config datagram, then
  join their window or are dropped; every row dropped here is counted by reason;
- every half second, each window whose interval came up is evaluated by Evidently in a
  thread (the reader keeps draining the socket meanwhile) against its route's
  reference data; the result updates the status, the HTML report and the episode;
- an episode that should act runs its actions (window file, Kubeflow, webhook);
- config datagrams from the gateways say which routes to watch and how; every
  gateway process sends one every 2 s, so they are merged idempotently (see
  `config.merge_routes`): a route's windows, episodes and reference data stay as they
  are unless its drift block really changed;
- labels (`LabeledRecord`s, one per accepted `POST /v1/feedback` label) join the
  labeled window of their (route, version) (`labels.py`); every `labels.every` a
  window with new labels gets its metrics (accuracy, precision, recall, F1, AUC),
  concept drift against the version's first full window (with Evidently's
  ClassificationPreset report, `concept.py`) and the accuracy SLO; the retrain
  triggers (`triggers.py`: schedule, drift alert, data threshold, accuracy SLO) run
  the same actions once per episode, with the labeled window and their reason;
- every second the status file (and the senders' ledger) is rewritten;
- with `http`, the status, the metrics and the reports are served over HTTP
  (`api.py`), for gateways and Prometheus on other machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from gateway.controlplane.registry.client import RegistryConfig
from gateway.drift.actions import ACTIONS, ActionContext, configured, run_actions
from gateway.drift.channel import (
    ADDRESS_TAKEN,
    BAD_TAG,
    MAX_DATAGRAM,
    PROBE,
    UNAUTHENTICATED,
    Address,
    ChannelKey,
    Config,
    Labels,
    Rows,
    UdpAddress,
    Unreadable,
    bound_address,
    describe,
    read,
    receiver_socket,
    sender_of,
    signed,
    worker_address,
)
from gateway.drift.config import RouteDrift, SeenConfig, merge_routes, route_drifts
from gateway.drift.episodes import Episode, Episodes
from gateway.drift.labeled import LabeledRecord
from gateway.drift.labels import (
    FeatureJoin,
    LabelWindow,
    WindowMetrics,
    labeled_frame,
    window_metrics,
)
from gateway.drift.refdata import REFRESH_REGISTRY, Reference, ReferenceError, load_reference
from gateway.drift.senders import SENDERS_FILE, Ledger
from gateway.drift.status import STATUS_FILE, label_version, report_path, write_json
from gateway.drift.triggers import (
    ONE_SHOT,
    REASONS,
    Triggers,
    accuracy_breached,
    concept_drifted,
)
from gateway.drift.window import Key, Window, Windows

log = logging.getLogger("switchyard.drift")
TICK = 0.5  # seconds between checks for due evaluations
# A window that received nothing for this long is forgotten: its version left the
# route (an alias moved on), and evaluating it again would only repeat its last result.
IDLE_WINDOW = 3600.0
STATUS_EVERY = 1.0
# The senders' ledger is saved at most this often while datagrams come (and with the
# status): a worker killed between two saves makes its successor count what came
# since the last save as lost (`senders.py`), so saves are frequent; it is small.
LEDGER_EVERY = 0.2
# Rows waiting for the config datagram that names their route (it comes every 2 s from
# each gateway, and before rows after an outage): enough for a burst at worker start.
HOLD_ROWS = 10_000
# A sender's config counts while it came within this (gateways send it every 2 s): a
# gateway that stopped, or moved to other policies, stops deciding the routes after it.
CONFIG_TTL = 10.0
# Distinct (route, version, reason) drop counters kept: route names in a datagram are
# not checked against any policy before they are counted, so they must not grow the
# metrics without bound. Beyond it, drops are counted under an empty route and version.
MAX_DROP_KEYS = 1000
# Log lines about datagrams refused (or taken unchecked) for their tag: at most one per
# sender and kind this often, for at most this many senders at a time (a sender id in
# a datagram that was not checked is anyone's to make up; the counters count them all).
NOTICE_EVERY = 60.0
MAX_NOTICES = 64
# Labels waiting for the config datagram that names their route, and how long one
# waits (configs come every 2 s from each gateway): then it is dropped as no_config.
HOLD_LABELS = 10_000
HOLD_LABELS_FOR = 10.0
# Sampled rows kept per route to join labels with their request's features (by the
# claim key the rows of ground-truth routes carry): a label later than this many
# sampled requests of its route is saved without its features.
JOIN_ROWS = 10_000
# A labeled window that got no label for this long is forgotten (its version left the
# route long ago; labels come late, so this is days, not the data windows' hour).
IDLE_LABEL_WINDOW = 7 * 86400.0
# The columns of an empty labeled window (a schedule that fires before any label).
LABEL_COLUMNS = (*LabeledRecord.__dataclass_fields__, "correct")
# The variable that holds the fleet secret: never handed to actions (a policy's
# token_env or secret_env naming it would send the secret to that endpoint).
_SECRET_ENV = "SWITCHYARD_FLEET_SECRET"


def _action_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != _SECRET_ENV}


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Where the worker lives and what it reads."""

    drift_dir: Path
    file_roots: tuple[str, ...] = ()
    registry: RegistryConfig | None = None
    generation: int = 1  # how many times the manager started a worker (restarts + 1)
    parent_pid: int | None = None  # exit when this process is gone
    env: Mapping[str, str] = field(default_factory=_action_env)  # for actions' tokens
    transport: httpx.AsyncBaseTransport | None = None  # test seam for outgoing calls
    listen: Address | None = None  # None: this machine's address of `drift_dir`
    http: tuple[str, int] | None = None  # serve status, metrics and reports here
    token: str | None = None  # bearer token the HTTP reports need (the admin token)
    # The fleet secret's key: with one, only datagrams tagged under it are taken.
    key: ChannelKey | None = None
    key_source: str = ""  # where the secret came from (status, logs), never the secret


@dataclass(slots=True)
class _WindowState:
    evaluations: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    result: dict[str, Any] = field(default_factory=dict)
    due: float = 0.0
    error: str | None = None
    evaluated_received: int = -1  # window.received at the last evaluation


@dataclass(slots=True)
class _LabelState:
    due: float = 0.0
    evaluated_received: int = -1
    metrics: WindowMetrics | None = None
    reference: WindowMetrics | None = None  # the version's first full window
    concept_drift: bool | None = None
    accuracy_breached: bool | None = None
    evaluated_at: float | None = None
    report: str | None = None  # the concept-drift report, relative to the drift dir
    # A report skipped because Evidently was still loading: made at a later tick even
    # if no new label comes (the window's verdicts are not evaluated again for it).
    report_owed: bool = False
    error: str | None = None


class DriftWorker:
    """The state and loops of one drift worker process."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        # Absolute: saved windows become file:// URIs (a relative path has none) that
        # a pipeline elsewhere reads, and the status names files under it.
        self.dir = options.drift_dir.resolve()
        self.windows = Windows(Window)
        self.episodes = Episodes(self.dir / "episodes.json")
        self.ledger = Ledger(self.dir / SENDERS_FILE)
        self.routes: dict[str, RouteDrift] = {}
        self.references: dict[str, Reference] = {}
        self.reference_errors: dict[str, str] = {}
        self.states: dict[Key, _WindowState] = {}
        self.actions: dict[str, dict[str, dict[str, int]]] = {}
        # (route, version, reason) -> rows that never reached a window (see `receive`).
        self.dropped: dict[tuple[str, str, str], int] = {}
        self._held: deque[tuple[Rows, float]] = deque()  # rows waiting for their config
        self._held_rows = 0
        self.error: str | None = None
        self.started_at = time.time()
        self._ledger_saved = 0.0
        self.address: Address | None = None  # bound, once `run` is
        self.http_url: str | None = None
        # Every distinct config heard (digest -> when first heard and its routes), the
        # live digests the routes were last merged from, and where they disagree.
        self._configs: dict[str, SeenConfig] = {}
        self._merged_from: frozenset[str] = frozenset()
        self.conflicts: dict[str, list[str]] = {}
        self._detect_ready = asyncio.Event()
        self._warm: asyncio.Task[None] | None = None
        self.unverified = 0  # signed datagrams taken unchecked (no fleet secret here)
        # Ground truth: labeled windows, the features to join them with, the triggers.
        self.labels = Windows(LabelWindow)
        self.label_states: dict[Key, _LabelState] = {}
        self.joins: dict[str, FeatureJoin] = {}
        self.triggers = Triggers()
        self.trigger_episodes = {
            r: Episodes(self.dir / f"episodes-{r}.json", kind=r) for r in REASONS if r != "drift"
        }
        # (route, version, reason) -> episodes whose actions ran (a retrain started).
        self.fires: dict[tuple[str, str, str], int] = {}
        self._retry_at: dict[tuple[str, Key], float] = {}  # one-shot episodes unfinished
        self._held_labels: deque[tuple[LabeledRecord, float]] = deque()
        self._noticed: dict[tuple[str, str], float] = {}  # (kind, sender) -> logged at

    # Configuration ------------------------------------------------------------------

    def configure(self, config: Config, now: float | None = None) -> None:
        """Take the drift blocks one gateway process sent (many send the same: it
        changes nothing then), then place or drop the rows that waited for its config."""
        now = time.time() if now is None else now
        if config.digest not in self._configs:
            routes, problems = route_drifts(config.routes)
            for problem in problems:
                log.error("drift worker: %s", problem)
            self._configs[config.digest] = SeenConfig(config.digest, now, routes)
        changed = self.ledger.configured(config.head.sender, config.digest, now)
        # The same config again from a sender (every 2 s from each): nothing to merge,
        # unless its config is not among the merged ones (it was not heard lately).
        if changed or config.digest not in self._merged_from:
            self.refresh_routes(now)
        self._release_held(config.head.sender)
        if self._held_labels:
            self._release_labels(now)

    def refresh_routes(self, now: float) -> None:
        """Merge the configs of the senders heard lately into the watched routes, if
        that set of configs changed (no sender heard lately: keep the routes as they
        are, so a worker cut off from its gateways for a while loses no windows)."""
        live = frozenset(self.ledger.live_configs(now, CONFIG_TTL))
        if not live or live == self._merged_from:
            return
        self._merged_from = live
        routes, conflicts = merge_routes(self._configs[d] for d in live if d in self._configs)
        for route, digests in conflicts.items():
            if self.conflicts.get(route) != digests:
                log.warning(
                    "drift worker: gateways send different drift blocks for route %s; "
                    "using config %s, the newest heard (also heard: %s)",
                    route,
                    digests[0],
                    ", ".join(digests[1:]),
                )
        self.conflicts = conflicts
        self._apply(routes)
        wanted = {s.config for s in self.ledger if s.config is not None}
        for digest in [d for d in self._configs if d not in wanted]:
            del self._configs[digest]

    def configs_heard(self) -> frozenset[str]:
        """The digests of the configs the watched routes were last merged from."""
        return self._merged_from

    def _apply(self, routes: dict[str, RouteDrift]) -> None:
        """Watch `routes`, keeping whatever of each route did not really change."""
        if routes == self.routes:
            return
        for name, route in routes.items():
            old = self.routes.get(name)
            if old is None:
                continue
            if (old.spec.reference, old.base) != (route.spec.reference, route.base):
                self.references.pop(name, None)  # load the (new) reference again
                self.reference_errors.pop(name, None)
            if (old.protocol, old.spec.features) != (route.protocol, route.spec.features):
                # Rows of other columns: not comparable with the new ones.
                self._forget_windows(name)
                log.info("drift worker: route %s has new features; its windows restart", name)
        for name in self.routes.keys() - routes.keys():
            self._forget_windows(name)
            self._forget_labels(name)
        now = time.time()
        for name, route in routes.items():
            self.triggers.configure(name, route.spec.triggers, now)
        self.routes = routes
        if routes and self._warm is None:
            self._warm = asyncio.get_running_loop().create_task(self.warm_up())
        log.info("drift worker: watching %d route(s): %s", len(routes), ", ".join(routes) or "-")

    def _forget_windows(self, route: str) -> None:
        for key, _ in self.windows.items():
            if key[0] == route:
                self.windows.forget(key)
                self.states.pop(key, None)

    def _forget_labels(self, route: str) -> None:
        for key, _ in self.labels.items():
            if key[0] == route:
                self.labels.forget(key)
        for key in [k for k in self.label_states if k[0] == route]:
            del self.label_states[key]
        self.joins.pop(route, None)
        self.triggers.forget_route(route)

    # Receiving ------------------------------------------------------------------------

    def receive(self, sock: socket.socket) -> None:
        """Drain the socket (bounded per call, so evaluations get their turn)."""
        now = time.time()
        for _ in range(1024):
            try:
                datagram, peer = sock.recvfrom(MAX_DATAGRAM + 4096)
            except (BlockingIOError, InterruptedError):
                break
            self.accept(datagram, now, peer)
        if now - self._ledger_saved >= LEDGER_EVERY:
            self._ledger_saved = now
            self.ledger.save()

    def accept(self, datagram: bytes, now: float, peer: Any = None) -> None:
        """Take one datagram: a config, or rows for their window (`peer`: where it came
        from, for log lines about datagrams refused)."""
        if datagram == PROBE:  # a sender checking whether a worker is back
            return
        key = self.options.key
        message = read(datagram, key)
        if isinstance(message, Unreadable):  # no right tag, another version, not ours
            self.drop("", "", message.reason, 1)
            if message is UNAUTHENTICATED or message is BAD_TAG:
                self._refused(message.reason, datagram, peer, now)
            return
        if key is None and signed(datagram):
            self.unverified += 1
            self._notice(
                "unverified",
                datagram,
                peer,
                now,
                "signs its datagrams with a fleet secret, and this worker has none to "
                "check them with: taken unchecked (%d so far); give the worker the "
                "gateways' secret (SWITCHYARD_FLEET_SECRET or --fleet-secret-file)",
                self.unverified,
            )
        rows = len(message.rows) if isinstance(message, Rows) else 0
        if self.ledger.observe(message.head, rows, now) in ("late", "duplicate"):
            return  # counted as lost before, or taken before: its rows count once
        if isinstance(message, Config):
            self.configure(message, now)
        elif isinstance(message, Labels):
            if message.malformed:
                self.drop("", "", "labels_malformed", message.malformed)
            self.take_labels(message.records, now)
        elif message.route in self.routes:
            self._add(message, now)
        else:
            # Its config has not arrived (this worker just started, or restarted between
            # two of the sender's flushes) or the route has no drift block any more; the
            # sender's next config datagram tells which.
            self._held.append((message, now))
            self._held_rows += len(message.rows)
            while self._held_rows > HOLD_ROWS:
                old, _ = self._held.popleft()
                self._held_rows -= len(old.rows)
                self.drop(old.route, old.version, "no_config", len(old.rows))

    def _add(self, message: Rows, now: float) -> None:
        config = self.routes[message.route]
        window = self.windows.get(
            (message.route, message.version),
            config.spec.window.size,
            config.spec.window.duration,
        )
        window.add(message.rows, message.variant, now)
        if any("key" in row for row in message.rows):  # a ground-truth route's rows
            join = self.joins.get(message.route)
            if join is None:
                join = self.joins[message.route] = FeatureJoin(JOIN_ROWS)
            join.add(message.rows)

    def take_labels(self, records: Sequence[LabeledRecord], now: float | None = None) -> None:
        """Labels for their labeled windows; those of a route with no drift block here
        (yet) wait for the next config, bounded (see HOLD_LABELS)."""
        now = time.time() if now is None else now
        for record in records:
            if record.route in self.routes:
                self._add_label(record, now)
                continue
            self._held_labels.append((record, now))
            if len(self._held_labels) > HOLD_LABELS:
                old, _ = self._held_labels.popleft()
                self.drop(old.route, old.version, "labels_no_config", 1)

    def _add_label(self, record: LabeledRecord, now: float) -> None:
        spec = self.routes[record.route].spec.labels
        key = (record.route, label_version(record.version, record.variant))
        self.labels.get(key, spec.size, spec.duration).add(record, now)
        self.triggers.labeled(key)

    def _release_labels(self, now: float) -> None:
        """Held labels whose route is watched now join their window; those that waited
        longer than HOLD_LABELS_FOR are dropped (no drift block names their route)."""
        kept: deque[tuple[LabeledRecord, float]] = deque()
        for record, arrived in self._held_labels:
            if record.route in self.routes:
                self._add_label(record, arrived)
            elif now - arrived > HOLD_LABELS_FOR:
                self.drop(record.route, record.version, "labels_no_config", 1)
            else:
                kept.append((record, arrived))
        self._held_labels = kept

    def _release_held(self, sender: str) -> None:
        """Rows whose route is watched now join their window; those of `sender`, whose
        config just came, are dropped if it has no drift block for their route."""
        kept: deque[tuple[Rows, float]] = deque()
        for message, arrived in self._held:
            if message.route in self.routes:
                # Arrival time, not now: a window with a duration ages them from then.
                self._add(message, arrived)
            elif message.head.sender == sender:
                self.drop(message.route, message.version, "unknown_route", len(message.rows))
            else:
                kept.append((message, arrived))
                continue
            self._held_rows -= len(message.rows)
        self._held = kept

    def _refused(self, reason: str, datagram: bytes, peer: Any, now: float) -> None:
        if reason == UNAUTHENTICATED.reason:
            why = (
                "sent a datagram without a tag, and this worker takes only datagrams "
                "tagged with the fleet secret: dropped (%d so far); give that gateway the "
                "worker's secret (SWITCHYARD_FLEET_SECRET or --fleet-secret-file)"
            )
        else:
            why = (
                "sent a datagram whose tag does not match (signed with another fleet "
                "secret, altered or forged): dropped (%d so far)"
            )
        self._notice(reason, datagram, peer, now, why, self.dropped.get(("", "", reason), 0))

    def _notice(
        self, kind: str, datagram: bytes, peer: Any, now: float, why: str, count: int
    ) -> None:
        """Log "sender S (peer) `why`" about the sender `datagram` names (unchecked: only
        for the log), at most once per sender and kind every NOTICE_EVERY seconds."""
        sender = sender_of(datagram)
        key = (kind, sender)
        last = self._noticed.get(key)
        if last is not None and now - last < NOTICE_EVERY:
            return
        if last is None and len(self._noticed) >= MAX_NOTICES:
            self._noticed = {k: t for k, t in self._noticed.items() if now - t < NOTICE_EVERY}
            if len(self._noticed) >= MAX_NOTICES:
                return  # many senders at once: the counters have them all
        self._noticed[key] = now
        log.warning("drift worker: sender %s (%s) " + why, sender, _peer(peer), count)

    def drop(self, route: str, version: str, reason: str, rows: int) -> None:
        """Count rows that never reached a window."""
        key = (route, version, reason)
        if key not in self.dropped and len(self.dropped) >= MAX_DROP_KEYS:
            key = ("", "", reason)
        self.dropped[key] = self.dropped.get(key, 0) + rows

    # Evaluating -----------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Import Evidently in a thread once a route needs it, so that the first
        evaluation is not late and the socket keeps being drained meanwhile."""
        try:
            await asyncio.to_thread(__import__, "gateway.drift.detect")
        except Exception as exc:  # ImportError, or evidently failing with the wrong pandas
            self.error = (
                f"cannot load Evidently ({type(exc).__name__}: {exc}); install the drift "
                "extra: pip install 'switchyard[drift]' (evidently 0.7 needs pandas<3)"
            )
            log.error("drift worker: %s", self.error)
            return
        self._detect_ready.set()

    async def evaluate_due(self, now: float) -> None:
        """Evaluate every window whose interval came up."""
        for key, window in self.windows.items():
            config = self.routes.get(key[0])
            if config is None:
                continue
            state = self.states.setdefault(key, _WindowState(due=now + config.spec.window.every))
            if now < state.due:
                continue
            state.due = now + config.spec.window.every
            if now - window.last_added > max(IDLE_WINDOW, 2 * (config.spec.window.duration or 0)):
                self.windows.forget(key)
                self.states.pop(key, None)
                continue
            window.trim(now)
            if len(window) < config.spec.window.min_samples or not self._detect_ready.is_set():
                continue
            if window.received == state.evaluated_received:
                continue  # nothing new since the last evaluation: same data, same verdict
            state.evaluated_received = window.received
            await self._evaluate(key, config, window.snapshot(), sorted(window.variants), now)

    async def _reference(self, config: RouteDrift, now: float) -> Reference | None:
        ref = self.references.get(config.route)
        stale = ref is not None and ref.registry and now - ref.loaded_at > REFRESH_REGISTRY
        if ref is not None and not stale:
            return ref
        try:
            ref = await load_reference(
                config.spec, config.base, self.options.file_roots, self.options.registry, now
            )
        except ReferenceError as exc:
            if self.reference_errors.get(config.route) != str(exc):
                log.error("drift %s: %s", config.route, exc)
            self.reference_errors[config.route] = str(exc)
            return self.references.get(config.route)  # a stale registry reference still serves
        self.reference_errors.pop(config.route, None)
        self.references[config.route] = ref
        log.info("drift %s: reference %s (%d rows)", config.route, ref.origin, len(ref.frame))
        return ref

    async def _evaluate(
        self,
        key: Key,
        config: RouteDrift,
        rows: Sequence[Mapping[str, Any]],
        variants: list[str],
        now: float,
    ) -> None:
        from gateway.drift import detect

        state = self.states[key]
        reference = await self._reference(config, now)
        if reference is None:
            state.error = self.reference_errors.get(config.route, "no reference data")
            return
        columns = config.columns(reference.frame.columns)
        missing = [c for c in columns if c not in reference.frame.columns]
        if missing:
            state.error = f"the reference data has no column(s) {', '.join(missing)}"
            state.evaluations["error"] += 1
            return
        current = detect.frame(rows, columns)
        options = detect.DetectConfig(columns=columns, **config.detect_options())
        html = report_path(self.dir, *key)
        try:
            result = await asyncio.to_thread(
                detect.evaluate, current, reference.frame, options, html
            )
        except Exception as exc:  # Evidently's failures are many; the route keeps going
            state.error = f"evaluation failed: {type(exc).__name__}: {exc}"
            state.evaluations["error"] += 1
            log.exception("drift %s/%s: evaluation failed", *key)
            return
        state.error = None
        state.evaluations["ok"] += 1
        state.result = {
            "evaluated_at": now,
            "duration_s": round(result.duration_s, 4),
            "rows": result.rows,
            "share": result.share,
            "drifted": result.drifted,
            "columns": {
                c.column: {
                    "score": c.score,
                    "drifted": c.drifted,
                    "method": c.method,
                    "threshold": c.threshold,
                }
                for c in result.columns
            },
            "skipped_columns": list(result.skipped),
            "report": str(html.relative_to(self.dir)),
            "reference": reference.origin,
        }
        log.info(
            "drift %s/%s: share %.2f (%s) over %d rows in %.2fs",
            *key,
            result.share,
            "DRIFT" if result.drifted else "ok",
            result.rows,
            result.duration_s,
        )
        spec = config.spec
        verdict, episode = self.episodes.observe(
            key, result.drifted, now, cooldown=spec.cooldown, clear_after=spec.clear_after
        )
        counts = self.actions.setdefault(config.route, {})
        if verdict == "cooldown" and episode is not None and not episode.suppressed:
            episode.suppressed = True
            for action in configured(spec):
                bucket = counts.setdefault(action, {})
                bucket["suppressed"] = bucket.get("suppressed", 0) + 1
            log.info("drift %s/%s: new episode within the cooldown; no action", *key)
        if verdict != "act" or episode is None or not spec.triggers.drift:
            return  # with `triggers.drift: false`, drift episodes are reported only
        if not episode.summary:
            episode.summary = result.summary()
        if episode.acted_at is None:
            self._fired(key, "drift")
        ctx = ActionContext(
            route=config.route,
            spec=spec,
            base=config.base,
            roots=self.options.file_roots,
            windows_dir=self.dir / "windows",
            env=self.options.env,
            transport=self.options.transport,
        )
        outcomes = await run_actions(
            ctx, key[1], variants, episode, current, config.model_name(variants)
        )
        for action, outcome in outcomes.items():
            bucket = counts.setdefault(action, {})
            bucket[outcome] = bucket.get(outcome, 0) + 1
        self.episodes.acted(key, episode, now)

    # Ground truth ---------------------------------------------------------------------

    async def evaluate_labels(self, now: float) -> None:
        """Metrics, concept drift and the accuracy SLO of every labeled window whose
        interval came up and that got labels since its last evaluation."""
        for key, window in self.labels.items():
            config = self.routes.get(key[0])
            if config is None:
                continue
            spec = config.spec.labels
            state = self.label_states.setdefault(key, _LabelState(due=now))
            if now < state.due:
                continue
            state.due = now + spec.every
            if now - window.last_added > max(IDLE_LABEL_WINDOW, 2 * (spec.duration or 0)):
                self.labels.forget(key)
                self.label_states.pop(key, None)
                continue
            window.trim(now)
            if window.received == state.evaluated_received:
                # No new label: same window, same verdicts (only an owed report).
                reference = window.reference
                if state.report_owed and reference is not None and self._detect_ready.is_set():
                    state.report_owed = False
                    records = window.snapshot()
                    await self._concept_report(key, config, records, reference, state)
                continue
            state.evaluated_received = window.received
            await self._evaluate_labels(key, config, window, state, now)

    async def _evaluate_labels(
        self, key: Key, config: RouteDrift, window: LabelWindow, state: _LabelState, now: float
    ) -> None:
        spec = config.spec
        records = window.snapshot()
        state.metrics = window_metrics(records, spec.labels.positive)
        if state.reference is None and window.reference is not None:
            state.reference = window_metrics(window.reference, spec.labels.positive)
        state.evaluated_at = now
        enough = len(records) >= spec.labels.min_samples
        state.concept_drift = (
            concept_drifted(state.metrics, state.reference, spec.labels.max_accuracy_drop)
            if enough
            else None
        )
        trigger = spec.triggers.accuracy
        state.accuracy_breached = (
            accuracy_breached(state.metrics, trigger) if trigger is not None else None
        )
        if state.concept_drift is not None and window.reference is not None:
            state.report_owed = not self._detect_ready.is_set()
            if not state.report_owed:
                await self._concept_report(key, config, records, window.reference, state)
        metrics = state.metrics.to_json() if state.metrics is not None else {}
        if state.concept_drift is not None:
            summary = {
                "accuracy": metrics.get("accuracy"),
                "reference_accuracy": state.reference.accuracy if state.reference else None,
                "max_accuracy_drop": spec.labels.max_accuracy_drop,
                "labels": len(records),
            }
            await self._episode("concept_drift", key, config, state.concept_drift, now, summary)
        if state.accuracy_breached is not None and trigger is not None:
            summary = {
                "accuracy": metrics.get("accuracy"),
                "min_accuracy": trigger.min,
                "labels": len(records),
                "correct": metrics.get("correct"),
            }
            await self._episode("accuracy", key, config, state.accuracy_breached, now, summary)

    async def _concept_report(
        self,
        key: Key,
        config: RouteDrift,
        records: Sequence[LabeledRecord],
        reference: Sequence[LabeledRecord],
        state: _LabelState,
    ) -> None:
        from gateway.drift import concept

        html = report_path(self.dir, *key, kind="labels")
        try:
            await asyncio.to_thread(
                concept.report, records, reference, config.spec.labels.positive, html
            )
        except Exception as exc:  # Evidently's failures are many; the metrics stand
            # (It fails on degenerate windows, such as one class only: logged once.)
            error = f"concept drift report failed: {type(exc).__name__}: {exc}"
            if state.error != error:
                log.warning("drift %s/%s: %s", *key, error)
            state.error = error
            return
        state.error = None
        state.report = str(html.relative_to(self.dir))

    async def _episode(
        self,
        reason: str,
        key: Key,
        config: RouteDrift,
        flagged: bool,
        now: float,
        summary: dict[str, Any],
    ) -> None:
        """One verdict of a trigger with episodes (concept drift, accuracy SLO): the
        episode's actions run once, with the drift block's cooldown."""
        spec = config.spec
        episodes = self.trigger_episodes[reason]
        verdict, episode = episodes.observe(
            key, flagged, now, cooldown=spec.cooldown, clear_after=spec.clear_after
        )
        if verdict == "cooldown" and episode is not None and not episode.suppressed:
            episode.suppressed = True
            self._count(config, dict.fromkeys(configured(spec), "suppressed"))
            log.info("drift %s/%s: new %s episode within the cooldown; no action", *key, reason)
        if verdict != "act" or episode is None:
            return
        if reason == "concept_drift" and not spec.triggers.drift:
            return  # reported only, as data drift
        if not episode.summary:
            episode.summary = summary
        await self._act(reason, key, config, episodes, episode, now)

    async def check_triggers(self, now: float) -> None:
        """Run the one-shot triggers that are due: schedules and data thresholds."""
        for route, scheduled_at in self.triggers.due_schedules(now):
            config = self.routes.get(route)
            if config is None or config.spec.triggers.schedule is None:
                self.triggers.schedule_done(route)
                continue
            key = self._newest_labeled(route)
            summary = {
                "schedule": config.spec.triggers.schedule,
                "scheduled_at": scheduled_at,
                "labels": self._labels_of(key),
            }
            if await self._one_shot("schedule", key, config, now, summary, scheduled_at):
                self.triggers.schedule_done(route)
        for key, _ in self.labels.items():
            config = self.routes.get(key[0])
            every = config.spec.triggers.labeled_samples if config is not None else None
            if config is None or every is None or not self.triggers.threshold_due(key, every):
                continue
            summary = {"labeled_samples": every, "labels": self._labels_of(key)}
            if await self._one_shot("labeled_samples", key, config, now, summary):
                self.triggers.threshold_done(key, every)

    def _newest_labeled(self, route: str) -> Key:
        """The (route, version) a schedule retrains from: the version labeled last, else
        the one sampled last, else no version."""
        labeled = [(w.last_added, k) for k, w in self.labels.items() if k[0] == route]
        if labeled:
            return max(labeled)[1]
        sampled = [(w.last_added, k) for k, w in self.windows.items() if k[0] == route]
        return max(sampled)[1] if sampled else (route, "")

    def _labels_of(self, key: Key) -> int:
        window = self.labels.find(key)
        return len(window) if window is not None else 0

    async def _one_shot(
        self,
        reason: str,
        key: Key,
        config: RouteDrift,
        now: float,
        summary: dict[str, Any],
        started_at: float | None = None,
    ) -> bool:
        """One episode of a one-shot trigger, begun at `started_at` (a schedule's time;
        default now); True once all its actions succeeded (it is over then).
        Unfinished, it is tried again after `labels.every`."""
        if now < self._retry_at.get((reason, key), 0.0):
            return False
        episodes = self.trigger_episodes[reason]
        begun = now if started_at is None else started_at
        verdict, episode = episodes.observe(key, True, begun, cooldown=0.0, clear_after=1)
        if verdict != "act" or episode is None:
            return False
        if not episode.summary:
            episode.summary = summary
        if await self._act(reason, key, config, episodes, episode, now):
            episodes.observe(key, False, now, cooldown=0.0, clear_after=1)  # ends it
            self._retry_at.pop((reason, key), None)
            return True
        self._retry_at[(reason, key)] = now + config.spec.labels.every
        return False

    async def _act(
        self,
        reason: str,
        key: Key,
        config: RouteDrift,
        episodes: Episodes,
        episode: Episode,
        now: float,
    ) -> bool:
        """Run the pending actions of a trigger's episode with the labeled window of
        `key` (a route without labels: its data window, the live features); True when
        every configured action has succeeded."""
        window = self.labels.find(key)
        records = window.snapshot() if window is not None else []
        rows = labeled_frame(records, self.joins.get(key[0]))
        variants = sorted(window.variants) if window is not None else []
        data = None if rows else dict(self.windows.items()).get(key)
        if data is not None and len(data):
            rows = [{k: v for k, v in row.items() if k != "key"} for row in data.snapshot()]
            variants = sorted(data.variants)
        frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(LABEL_COLUMNS))
        if episode.acted_at is None:
            self._fired(key, reason)
            log.info("drift %s/%s: retrain trigger %s fired: %s", *key, reason, episode.summary)
        ctx = ActionContext(
            route=config.route,
            spec=config.spec,
            base=config.base,
            roots=self.options.file_roots,
            windows_dir=self.dir / "windows",
            env=self.options.env,
            transport=self.options.transport,
            reason=reason,
        )
        outcomes = await run_actions(
            ctx, key[1], variants, episode, frame, config.model_name(variants)
        )
        self._count(config, outcomes)
        episodes.acted(key, episode, now)
        return all(a in episode.done for a in configured(config.spec))

    def _count(self, config: RouteDrift, outcomes: Mapping[str, str]) -> None:
        counts = self.actions.setdefault(config.route, {})
        for action, outcome in outcomes.items():
            bucket = counts.setdefault(action, {})
            bucket[outcome] = bucket.get(outcome, 0) + 1

    def _fired(self, key: Key, reason: str) -> None:
        fired = (key[0], key[1], reason)
        self.fires[fired] = self.fires.get(fired, 0) + 1

    def _labels_status(self, route: str, config: RouteDrift) -> dict[str, Any]:
        """The route's labeled windows and triggers, for the status."""
        triggers = config.spec.triggers
        versions: dict[str, Any] = {}
        for key, window in self.labels.items():
            if key[0] != route:
                continue
            state = self.label_states.get(key, _LabelState())
            episodes: dict[str, Any] = {}
            for reason in ("concept_drift", "accuracy", *ONE_SHOT):
                store = self.trigger_episodes[reason]
                current = store.current(key)
                episodes[reason] = {
                    "count": store.count(key),
                    "current": None
                    if current is None
                    else {
                        "id": current.id,
                        "started_at": current.started_at,
                        "acted_at": current.acted_at,
                        "done": list(current.done),
                        "window_uri": current.window_uri,
                        "run_id": current.run_id,
                    },
                }
            versions[key[1]] = {
                "variants": sorted(window.variants),
                "window": len(window),
                "received": window.received,
                "last_label_at": window.last_added,
                "evaluated_at": state.evaluated_at,
                "metrics": None if state.metrics is None else state.metrics.to_json(),
                "reference": None if state.reference is None else state.reference.to_json(),
                "concept_drift": state.concept_drift,
                "accuracy_breached": state.accuracy_breached,
                "labels_since_threshold": self.triggers.since(key),
                "report": state.report,
                "error": state.error,
                "episodes": episodes,
            }
        fires: dict[str, int] = {}
        for (r, _, reason), n in self.fires.items():
            if r == route:
                fires[reason] = fires.get(reason, 0) + n
        return {
            "labels": versions,
            "triggers": {
                "schedule": triggers.schedule,
                "next_schedule_at": self.triggers.next_schedule(route),
                "drift": triggers.drift,
                "labeled_samples": triggers.labeled_samples,
                "min_accuracy": None if triggers.accuracy is None else triggers.accuracy.min,
                "fires": fires,
                "fires_by_version": {
                    v: {rs: n for (r2, v2, rs), n in self.fires.items() if r2 == route and v2 == v}
                    for (r, v, _) in self.fires
                    if r == route
                },
            },
        }

    # Publishing -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What `status.json` holds (see `status.py` and the admin API)."""
        routes: dict[str, Any] = {}
        for name, config in sorted(self.routes.items()):
            routes[name] = {
                "sample": config.spec.sample,
                "reference": config.spec.reference,
                "error": self.reference_errors.get(name),
                "actions": {a: dict(o) for a, o in self.actions.get(name, {}).items()},
                "versions": {},
                **self._labels_status(name, config),
            }
        for key, window in self.windows.items():
            entry = routes.get(key[0])
            if entry is None:
                continue
            state = self.states.get(key, _WindowState())
            episode = self.episodes.current(key)
            entry["versions"][key[1]] = {
                "variants": sorted(window.variants),
                "window": len(window),
                "received": window.received,
                "last_sample_at": window.last_added,
                "evaluations": dict(state.evaluations),
                "error": state.error,
                "episodes": self.episodes.count(key),
                "episode": None
                if episode is None
                else {
                    "id": episode.id,
                    "started_at": episode.started_at,
                    "acted_at": episode.acted_at,
                    "done": list(episode.done),
                    "window_uri": episode.window_uri,
                    "run_id": episode.run_id,
                },
                **state.result,
            }
        now = time.time()
        totals = self.ledger.totals()
        dropped = dict(self.dropped)
        if totals["rows_lost"]:  # rows in datagrams that never came (see `senders.py`)
            dropped[("", "", "lost")] = totals["rows_lost"]
        live = self.ledger.live_configs(now, CONFIG_TTL)
        return {
            "pid": os.getpid(),
            "generation": self.options.generation,
            "started_at": self.started_at,
            "heartbeat": now,
            "error": self.error,
            "listen": describe(self.address) if self.address is not None else None,
            # Whether datagrams must carry the fleet secret's tag (where the secret came
            # from, never the secret), and the signed ones taken unchecked without it.
            "auth": {
                "verifies": self.options.key is not None,
                "secret": self.options.key_source or None,
                "unverified": self.unverified,
            },
            "http": self.http_url,
            "held_rows": self._held_rows,
            "dropped": [
                {"route": r, "version": v, "reason": reason, "samples": n}
                for (r, v, reason), n in sorted(dropped.items())
            ],
            "senders": {
                "live": sum(live.values()),
                "datagrams": {k: v for k, v in totals.items() if k != "rows_lost"},
                "rows_lost": totals["rows_lost"],
                "by_sender": {s.id: s.view() for s in self.ledger},
            },
            "configs": {
                "live": {
                    d: {"senders": n, "first_seen": self._configs[d].first_seen}
                    for d, n in sorted(live.items())
                    if d in self._configs
                },
                "conflicts": self.conflicts,
            },
            "actions_known": list(ACTIONS),
            "routes": routes,
        }

    def publish(self) -> None:
        try:
            write_json(self.dir / STATUS_FILE, self.status())
        except OSError as exc:
            log.error("drift worker: cannot write %s: %s", self.dir / STATUS_FILE, exc)
        self.ledger.forget_idle(time.time())
        self.ledger.save()

    # Running --------------------------------------------------------------------------

    def _say_auth(self) -> None:
        shown = describe(self.address) if self.address is not None else "?"
        if self.options.key is not None:
            log.info(
                "drift worker: taking only datagrams tagged with the fleet secret from %s",
                self.options.key_source or "the options",
            )
        elif isinstance(self.address, UdpAddress):
            log.warning(
                "drift worker: no fleet secret (SWITCHYARD_FLEET_SECRET or "
                "--fleet-secret-file): anything that reaches %s may send it configs and "
                "rows, and a config names the Kubeflow endpoint it calls",
                shown,
            )

    async def _publisher(self, stop: asyncio.Event) -> None:
        # Its own task: a Kubeflow call retrying with backoff must not let the
        # heartbeat go stale (the gateways would report the worker down).
        while not stop.is_set():
            self.publish()
            parent = self.options.parent_pid
            if parent is not None and os.getppid() != parent:
                log.warning("drift worker: the gateway is gone; exiting")
                stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_EVERY)

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until `stop` is set (or the parent process is gone); returns an exit
        code: ADDRESS_TAKEN when another worker holds the address or HTTP port."""
        self.dir.mkdir(parents=True, exist_ok=True)
        address = self.options.listen or worker_address(self.dir)
        try:
            sock = receiver_socket(address)
        except OSError as exc:
            log.error(
                "drift worker: cannot bind %s (another worker there?): %s", describe(address), exc
            )
            return ADDRESS_TAKEN
        self.address = bound_address(address, sock)
        server = None
        if self.options.http is not None:
            from gateway.admin.server import AdminServer
            from gateway.drift.api import worker_app

            host, port = self.options.http
            server = AdminServer(worker_app(self.status, self.dir, self.options.token), host, port)
            if not await server.start():
                log.error("drift worker: cannot serve HTTP on %s:%d", host, port)
                sock.close()
                return ADDRESS_TAKEN
            shown = f"[{host}]" if ":" in host else host
            self.http_url = f"http://{shown}:{server.port}"
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self.receive, sock)
        publisher = loop.create_task(self._publisher(stop))
        log.info(
            "drift worker %d (generation %d) in %s", os.getpid(), self.options.generation, self.dir
        )
        self._say_auth()
        # Tests and tools read where it listens (port 0 picks one) from this line.
        http = f" http {self.http_url}" if self.http_url else ""
        print(f"switchyard drift-worker listening on {describe(self.address)}{http}", flush=True)
        try:
            while not stop.is_set():
                now = time.time()
                self.refresh_routes(now)  # senders that went quiet stop deciding routes
                await self.evaluate_due(now)
                await self.evaluate_labels(now)
                await self.check_triggers(now)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), TICK)
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
            tasks = [t for t in (publisher, self._warm) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if server is not None:
                await server.stop()
            while self._held:  # no config came for them before the end
                message, _ = self._held.popleft()
                self.drop(message.route, message.version, "shutdown", len(message.rows))
            self._held_rows = 0
            while self._held_labels:
                record, _ = self._held_labels.popleft()
                self.drop(record.route, record.version, "labels_shutdown", 1)
            self.publish()
        return 0


def _peer(peer: Any) -> str:
    """Where a datagram came from, for a log line."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "this machine"  # a Unix datagram socket's senders are unbound
