"""The rollout controller: steps challengers up, rolls them back, promotes them.

It runs in the gateway process as one asyncio task, off the request path. Every round
it reads the serving policies, and for each route with a `rollout` block:

- the writer (the process holding the writer lock, see `writer.py`) checks the gates
  every `analysis.interval` on what was counted since the step began (`analysis.py`),
  and steps the challenger up, rolls it back on the first failed gate, or, after the
  last step, promotes it (moves the registry alias) or holds;
- every other process reads the stored state (`store.py`) and follows it.

The counts come from the statistics source (`gateway.stats`): this process, the
supervisor's merged workers, or Prometheus over every replica, so the writer judges the
whole fleet's traffic. The totals read when a step began are subtracted from the totals
now; if the source cannot answer, or a counter went down since (a process restarted),
the step's counts are unknown and the gates wait: nothing is promoted or rolled back on
missing evidence.

Weights reach traffic the way every change does: the controller hands the reloader a
weight-override map and the reloader compiles a new snapshot and swaps it in. State
changes are stored first in memory (a rollback takes effect even while the registry is
down) and saved as soon as the store answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from gateway.controlplane.policy.fields import split_target
from gateway.controlplane.policy.loader import LoadedPolicy, PolicyError
from gateway.controlplane.policy.rollouts import baseline_of, challenger_of, tracks_feedback
from gateway.controlplane.policy.schema import RoutingPolicy
from gateway.controlplane.registry.client import MlflowRegistry, RegistryError
from gateway.dataplane.feedback import ExposureLog
from gateway.dataplane.snapshot import Route, SnapshotRef, Variant
from gateway.observability.rollout_metrics import (
    PairStat,
    RolloutCounters,
    RolloutGauge,
    VariantFeedback,
)
from gateway.rollout import experiments
from gateway.rollout.accuracy import AccuracySource
from gateway.rollout.analysis import Counts, judge, quantile
from gateway.rollout.events import EventSink
from gateway.rollout.promote import promote
from gateway.rollout.state import OUT, RolloutState, implied_weights, start, transition
from gateway.rollout.stats import warm_up
from gateway.rollout.store import Command, FileStore, RegistryStore, RolloutStore
from gateway.rollout.weights import VariantKey
from gateway.rollout.writer import WriterLock
from gateway.stats.counts import RouteStats, window
from gateway.stats.sources import Evidence, StatsSource, StatsUnavailable


class WeightTarget(Protocol):
    """What the controller needs of the reloader (`PolicyReloader`)."""

    @property
    def policies(self) -> list[LoadedPolicy]: ...

    @property
    def weights(self) -> dict[VariantKey, float]: ...

    async def set_weights(self, ref: SnapshotRef, weights: dict[VariantKey, float]) -> bool: ...


@dataclass(eq=False)
class _Run:
    """The controller's memory of one route's rollout (the state itself is stored)."""

    store: RolloutStore
    state: RolloutState | None = None
    loaded: bool = False  # the writer has read the store since it took the lock
    unsaved: bool = False  # the state changed but the store has not taken it yet
    read_at: float = 0.0
    checked_at: float = 0.0
    # The step's window: the route's totals when it began (None until the source has
    # answered with numbers at least as fresh as `window_from`).
    baseline: RouteStats | None = None
    window_from: float = 0.0
    champion_p99: float | None = None
    analysis: dict[str, Any] | None = None  # the last verdict, for the status view


class RolloutController:
    """Drives every route's rollout; one per gateway process."""

    def __init__(
        self,
        target: WeightTarget,
        counters: RolloutCounters,
        exposures: ExposureLog,
        lock: WriterLock,
        stats: StatsSource,
        *,
        state_dir: str,
        registry: MlflowRegistry | None = None,
        poke: Callable[[], None] | None = None,
        logger: logging.Logger | None = None,
        identity: str = "",
        clock: Callable[[], float] = time.time,
        events: EventSink | None = None,
        accuracy: AccuracySource | None = None,
    ) -> None:
        self._target = target
        self._counters = counters
        self._exposures = exposures
        self._lock = lock
        self._state_dir = state_dir
        self._registry = registry
        self.stats = stats
        self._poke = poke
        self._log = logger or logging.getLogger("switchyard.rollout")
        self._identity = identity
        self._clock = clock
        self._events = events or EventSink(counters, self._log)
        self._accuracy = accuracy  # the drift worker's labeled windows (accuracy gate)
        self._mutex = asyncio.Lock()
        self._runs: dict[str, _Run] = {}
        self._rolling: dict[str, RoutingPolicy] = {}
        self._tracked: dict[str, RoutingPolicy] = {}
        self._ref: SnapshotRef | None = None
        self.writer = False
        # Track feedback from the first request on, not from the first round.
        exposures.routes = frozenset(
            lp.policy.route for lp in target.policies if tracks_feedback(lp.policy)
        )
        counters.rollouts = self.gauges
        counters.feedback = self._feedback_rows
        counters.pairs = self._pair_rows
        counters.feedback_results = lambda: dict(exposures.results)
        counters.sources = lambda: [stats.gauge()]

    # Running --------------------------------------------------------------------

    async def run(self, ref: SnapshotRef) -> None:
        """Run rounds until cancelled; a failing round is logged and the next one retries."""
        self._ref = ref
        warmed = False
        while True:
            try:
                await self.tick(ref)
            except Exception:
                self._log.exception("rollout round failed")
            if self._tracked and not warmed:
                warmed = True  # scipy takes most of a second to import: not on the loop
                await asyncio.to_thread(warm_up)
            await asyncio.sleep(self._period())

    def _period(self) -> float:
        intervals = [p.rollout.analysis.interval for p in self._rolling.values() if p.rollout]
        return min(1.0, max(0.05, min(intervals) / 4)) if intervals else 1.0

    async def aclose(self) -> None:
        """Give up the writer lock and let webhooks in flight finish."""
        with contextlib.suppress(Exception):
            await self._lock.release()
        self.writer = False
        await self._events.aclose()

    async def tick(self, ref: SnapshotRef) -> None:
        """One round: follow or step every rollout, then apply the weights they imply."""
        self._ref = ref
        async with self._mutex:
            policies = {lp.policy.route: lp.policy for lp in self._target.policies}
            self._tracked = {r: p for r, p in policies.items() if tracks_feedback(p)}
            self._exposures.routes = frozenset(self._tracked)
            self._rolling = {r: p for r, p in policies.items() if p.rollout is not None}
            for gone in set(self._runs) - set(self._rolling):
                del self._runs[gone]
            if self._rolling:
                self.writer = await self._lock.acquire()
            elif self.writer:
                await self._lock.release()
                self.writer = False
            snapshot = ref.current
            for name, policy in self._rolling.items():
                try:
                    await self._advance(name, policy, snapshot.routes.get(name))
                except RegistryError as exc:
                    self._log.warning("rollout %s: registry: %s; retrying next round", name, exc)
                except Exception:
                    self._log.exception("rollout %s: round failed", name)
            await self._apply(ref)

    async def _apply(self, ref: SnapshotRef) -> None:
        weights: dict[VariantKey, float] = {}
        routes = ref.current.routes
        for name, run in self._runs.items():
            policy = self._rolling[name]
            state = run.state
            if state is not None and any(v.name == state.challenger for v in policy.variants):
                weights.update(implied_weights(state, policy, routes.get(name)))
        if weights != self._target.weights:
            try:
                await self._target.set_weights(ref, weights)
            except PolicyError as exc:
                self._log.error("rollout weights not applied: %s", exc)

    # One route ------------------------------------------------------------------

    def _store_for(self, policy: RoutingPolicy) -> RolloutStore:
        challenger = challenger_of(policy)
        spec = next((v for v in policy.variants if v.name == challenger), None)
        if self._registry is not None and spec is not None and spec.target is not None:
            return RegistryStore(self._registry, split_target(spec.target)[0], policy.route)
        return FileStore(self._state_dir, policy.route)

    async def _advance(self, name: str, policy: RoutingPolicy, route: Route | None) -> None:
        assert policy.rollout is not None
        run = self._runs.get(name)
        if run is None:
            run = self._runs[name] = _Run(self._store_for(policy))
            self._log.info("rollout %s: state kept in %s", name, run.store.description)
        now = self._clock()
        interval = policy.rollout.analysis.interval
        if route is None:
            return
        if not self.writer:
            run.loaded = False
            if now - run.read_at >= min(interval, 5.0):
                run.state, _ = await run.store.read(name)
                run.read_at = now
            return
        if run.unsaved and run.state is not None:
            await run.store.save(run.state)
            run.unsaved = False
        command = None
        # Re-read for commands other replicas left: at least every 5 s, long intervals too.
        if not run.loaded or now - run.read_at >= min(interval, 5.0):
            stored, command = await run.store.read(name)
            run.read_at = now
            if not run.loaded:  # just became the writer: continue from the stored state
                run.state, run.loaded = stored, True
                self._rebase(run, now)
        challenger = _variant(route, challenger_of(policy))
        base = _variant(route, baseline_of(policy))
        if challenger is None or base is None:
            return
        subject = _subject(challenger)
        if not subject:
            return  # not resolved yet: nothing to roll out until it is
        state = run.state
        if state is None or state.subject != subject or state.challenger != challenger.name:
            champion = _subject(base)
            if subject == champion:
                return  # the challenger serves what the champion serves: nothing to do
            state = start(policy, challenger.name, subject, champion, self._identity, now)
            await self._commit(run, policy, state)
            self._rebase(run, now)
        if command is not None and command.id != state.command and command.at >= state.started_at:
            state = await self._command(run, policy, state, command, now)
        if state.status != "progressing":
            return
        if run.baseline is None:  # every round until the source answers, not every interval
            await self._start_window(run, name, now)
        if run.baseline is None or now - run.checked_at < interval:
            return
        run.checked_at = now
        await self._analyse(run, policy, route, state, challenger, base, now)

    def _rebase(self, run: _Run, now: float) -> None:
        """Start the step's window: the totals of the next read are its baseline."""
        run.baseline = None
        run.window_from = now
        run.checked_at = now
        run.analysis = None

    async def _start_window(self, run: _Run, name: str, now: float) -> None:
        """Take the step's baseline from the source, once its numbers are at least as
        fresh as the step (Prometheus: every process scraped since it began)."""
        evidence = await self._read(run, name, now)
        if evidence is None:
            return
        source = evidence.origin.to_json()
        as_of = evidence.origin.as_of
        if as_of is not None and as_of < run.window_from:
            behind = run.window_from - as_of
            why = (
                f"waiting for {self.stats.where} to count from the step's start: its "
                f"numbers are {behind:.1f}s older than the step"
            )
            self._wait(run, name, now, why, source)
            return
        run.baseline = evidence.stats
        run.checked_at = now
        reason = f"the step's counts start now, read from {self.stats.where}"
        run.analysis = {"at": now, "outcome": "wait", "reason": reason, "source": source}

    async def _read(self, run: _Run, name: str, now: float) -> Evidence | None:
        """The route's numbers from the source; None (the gates wait) if it fails."""
        try:
            return await self.stats.read(name)
        except StatsUnavailable as exc:
            self._wait(run, name, now, exc.reason, exc.origin.to_json())
            return None

    def _wait(self, run: _Run, name: str, now: float, reason: str, source: dict[str, Any]) -> None:
        """The gates wait for `reason` (logged when it changes)."""
        if run.analysis is None or run.analysis.get("reason") != reason:
            self._log.warning("rollout %s: %s; the gates wait", name, reason)
        run.analysis = {"at": now, "outcome": "wait", "reason": reason, "source": source}

    async def _analyse(
        self,
        run: _Run,
        policy: RoutingPolicy,
        route: Route,
        state: RolloutState,
        challenger: Variant,
        base: Variant,
        now: float,
    ) -> None:
        assert policy.rollout is not None and run.baseline is not None
        spec = policy.rollout.analysis
        evidence = await self._read(run, route.name, now)
        if evidence is None:
            return
        source = evidence.origin.to_json()
        delta = window(evidence.stats, run.baseline)
        if delta.unknown is not None:
            # Never judged: the step's numbers could be anything. Count again from here.
            why = f"counts unknown: {delta.unknown}; the step's window starts again now"
            self._wait(run, route.name, now, why, source)
            run.baseline, run.window_from = evidence.stats, now
            return
        champions = [
            v for v in route.variants if v.name != challenger.name and _policy_weight(policy, v) > 0
        ]
        mine = delta.counts(challenger.name, challenger.version)
        theirs = Counts()
        for v in champions:
            theirs = theirs + delta.counts(v.name, v.version)
        p99 = quantile(0.99, theirs.buckets)
        if p99 is not None:
            run.champion_p99 = p99  # at 100% the champion serves nothing: keep its last
        shadow = None
        if spec.min_shadow_agreement is not None:
            # Endpoint variants have no version: every shadow of the route counts.
            shadow = delta.agreement(challenger.version or None)
        accuracy = None
        if spec.min_accuracy is not None and self._accuracy is not None:
            accuracy = await self._accuracy(route.name, challenger.version or "", challenger.name)
        verdict = judge(
            spec, mine, theirs, champion_p99=run.champion_p99, shadow=shadow, accuracy=accuracy
        )
        summary = verdict.summary()
        run.analysis = {
            "at": now,
            "outcome": verdict.outcome,
            "reason": verdict.reason,
            **summary,
            "source": source,
        }
        if verdict.outcome == "wait":
            return
        if verdict.outcome == "fail":
            await self._rollback(run, policy, state, verdict.reason, summary, now)
            return
        if state.step + 1 < len(state.steps):
            nxt = state.step + 1
            reason = f"gates held at {state.percent:g}%; stepping to {state.steps[nxt]:g}%"
            state = state.with_event(
                "step",
                now,
                reason,
                step=nxt,
                percent=state.steps[nxt],
                step_started_at=now,
                details=summary,
            )
            await self._commit(run, policy, state)
            self._rebase(run, now)
            return
        await self._finish(run, policy, state, challenger, base, summary, now, evidence.stats)

    async def _rollback(
        self,
        run: _Run,
        policy: RoutingPolicy,
        state: RolloutState,
        reason: str,
        details: dict[str, Any],
        now: float,
    ) -> None:
        state = state.with_event("rollback", now, reason, status="rolled_back", details=details)
        await self._commit(run, policy, state)

    async def _finish(
        self,
        run: _Run,
        policy: RoutingPolicy,
        state: RolloutState,
        challenger: Variant,
        base: Variant,
        summary: dict[str, Any],
        now: float,
        stats: RouteStats,
    ) -> None:
        """After the last step: the significance gate (on the source's feedback counts),
        then promote or hold."""
        rollout = policy.rollout
        assert rollout is not None
        wanted = rollout.analysis.require_significance
        if wanted is not None:
            await asyncio.to_thread(warm_up)
            outcome, why, numbers = experiments.significance(
                wanted,
                stats.outcomes(base.name, base.version),
                stats.outcomes(challenger.name, challenger.version),
            )
            summary = {**summary, "significance": numbers}
            if run.analysis is not None:
                run.analysis.update(outcome=outcome, reason=why, significance=numbers)
            if outcome == "fail":
                await self._rollback(run, policy, state, why, summary, now)
                return
            if outcome == "wait":
                return
        if rollout.on_success == "hold":
            state = state.with_event(
                "completed", now, "every step passed; holding", status="completed", details=summary
            )
            await self._commit(run, policy, state)
            return
        await self._promote(run, policy, state, challenger, summary, now)

    async def _promote(
        self,
        run: _Run,
        policy: RoutingPolicy,
        state: RolloutState,
        challenger: Variant,
        summary: dict[str, Any],
        now: float,
    ) -> None:
        rollout = policy.rollout
        assert rollout is not None and challenger.target is not None
        if self._registry is None:
            if run.analysis is not None:
                run.analysis["reason"] = "promotion needs a registry (--registry-uri)"
            return
        try:
            state = await promote(
                self._registry, challenger.target, rollout.promote_to, state, summary, now
            )
        except RegistryError as exc:
            if run.analysis is not None:
                run.analysis["reason"] = f"promotion failed, retrying: {exc}"
            raise
        await self._commit(run, policy, state)
        if self._poke is not None:
            self._poke()  # re-resolve now: the champion variant moves to the new version

    async def _command(
        self,
        run: _Run,
        policy: RoutingPolicy,
        state: RolloutState,
        command: Command,
        now: float,
    ) -> RolloutState:
        """Apply a command another replica left in the store."""
        try:
            moved = transition(state, command.action, now, command.by)
        except ValueError as exc:
            self._log.warning(
                "rollout %s: command %s ignored: %s", state.route, command.action, exc
            )
            moved = state
        moved = replace(moved, command=command.id)
        await self._commit(run, policy, moved, publish=moved.history != state.history)
        if moved.step_started_at == now:
            self._rebase(run, now)
        return moved

    async def _commit(
        self, run: _Run, policy: RoutingPolicy, state: RolloutState, *, publish: bool = True
    ) -> None:
        """Make `state` current: in memory at once, in the store when it answers."""
        assert policy.rollout is not None
        state = replace(state, writer=self._identity)
        run.state = state
        run.unsaved = True
        if publish:
            self._events.publish(state, policy.rollout.webhook)
        await run.store.save(state)
        run.unsaved = False

    # Operators ------------------------------------------------------------------

    async def command(self, route: str, action: str, by: str = "") -> tuple[int, dict[str, Any]]:
        """pause / resume / abort from the admin API: (HTTP status, body)."""
        async with self._mutex:
            policy = self._rolling.get(route)
            run = self._runs.get(route)
            if policy is None:
                return 404, {"error": f"route {route!r} has no rollout block"}
            if run is None or run.state is None:
                return 409, {"error": f"rollout of {route!r} has not started yet"}
            now = self._clock()
            try:
                moved = transition(run.state, action, now, by)
            except ValueError as exc:
                return 409, {"error": str(exc), "state": run.state.view()}
            if not self.writer:
                command = Command(uuid.uuid4().hex, action, now, by)
                await run.store.put_command(route, command)
                holder = self._lock.holder or "the writer"
                return 202, {
                    "queued": True,
                    "message": f"{action} left for {holder} ({run.store.description})",
                    "state": run.state.view(),
                }
            await self._commit(run, policy, moved)
            if moved.step_started_at == now:
                self._rebase(run, now)
            if self._ref is not None:
                await self._apply(self._ref)
            return 200, {"state": moved.view()}

    # Views ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Every rollout: state, last analysis, where the state lives, who writes."""
        return {
            "writer": self.writer,
            "lock": self._lock.description,
            "holder": self._lock.holder,
            "statistics": self.stats.describe(),
            "rollouts": [self._view(name) for name in sorted(self._runs)],
        }

    def status_of(self, route: str) -> dict[str, Any] | None:
        """One route's rollout, or None if the route has no rollout block."""
        return self._view(route) if route in self._runs else None

    def _view(self, name: str) -> dict[str, Any]:
        run = self._runs[name]
        policy = self._rolling[name]
        assert policy.rollout is not None
        return {
            "route": name,
            "writer": self.writer,
            "store": run.store.description,
            "statistics": self.stats.describe(),
            "policy": policy.rollout.model_dump(mode="json"),
            "state": None if run.state is None else run.state.view(),
            "analysis": run.analysis,
        }

    async def experiment(self, route: str) -> dict[str, Any] | None:
        """`GET /admin/experiments/{route}` from the statistics source, or None if the
        route tracks no feedback; StatsUnavailable if the source does not answer."""
        policy = self._tracked.get(route)
        found = self._ref.current.routes.get(route) if self._ref is not None else None
        if policy is None or found is None:
            return None
        evidence = await self.stats.read(route)
        return experiments.report(
            found, policy, self._exposures, evidence.stats, evidence.origin.to_json()
        )

    def tracks(self, route: str) -> bool:
        """Whether the route has an experiment or rollout block."""
        return route in self._tracked

    def experiment_routes(self) -> list[str]:
        """Routes with an experiment or rollout block."""
        return sorted(self._tracked)

    def gauges(self) -> Iterator[RolloutGauge]:
        """Each rollout's state for `/metrics`."""
        for name, run in list(self._runs.items()):
            state = run.state
            if state is not None:
                percent = 0.0 if state.status in OUT else state.percent
                yield RolloutGauge(name, state.status, state.step_number, percent)

    def _feedback_rows(self) -> Iterator[VariantFeedback]:
        if self._ref is None:
            return iter(())
        return experiments.feedback_rows(
            dict(self._ref.current.routes), self._tracked, self._exposures
        )

    def _pair_rows(self) -> Iterator[PairStat]:
        # Until scipy is imported (in a thread, at start) a scrape skips the statistics
        # rather than import it on the event loop.
        if self._ref is None or "scipy.stats" not in sys.modules:
            return iter(())
        return experiments.pair_rows(dict(self._ref.current.routes), self._tracked, self._exposures)


def _variant(route: Route, name: str | None) -> Variant | None:
    return next((v for v in route.variants if v.name == name), None)


def _subject(variant: Variant) -> str:
    """What a rollout of `variant` rolls out: its version, else its endpoints."""
    return variant.version or ",".join(e.url for e in variant.endpoints)


def _policy_weight(policy: RoutingPolicy, variant: Variant) -> float:
    return next((v.weight for v in policy.variants if v.name == variant.name), 0.0)
