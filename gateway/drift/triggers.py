"""The retrain triggers' bookkeeping in the drift worker: when each one is due.

The four triggers of a route's `drift.triggers` (see `triggerspec.py`), and how each
becomes an episode (`episodes.py`, one `Episodes` per reason) whose actions run once:

- `drift` (the drift alert): data drift episodes (the worker's evaluations) and concept
  drift episodes (`concept_drifted`), with the drift block's cooldown and clear_after;
- `accuracy` (the SLO): an episode while the labeled window's accuracy is under the
  floor (`accuracy_breached`), with the same cooldown and clear_after; never judged on
  fewer labels than its `min_samples` (no evidence, no verdict);
- `schedule` (time-based) and `labeled_samples` (data threshold) are one-shot: each
  time one comes due it is one episode, which ends as soon as all its actions
  succeeded (tried again at each tick until then: the same episode, so the same
  Kubeflow run name, never a second run). No cooldown: their own rate limits them.

A schedule's next time is computed from the worker's clock when the route is first
configured; a time that passed while no worker ran is not caught up on.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.controlplane.policy.triggerspec import AccuracyTrigger, TriggersSpec
from gateway.drift.cron import Cron
from gateway.drift.labels import WindowMetrics

Key = tuple[str, str]  # (route, version)
# Every reason an episode's actions run for, as passed to Kubeflow and the webhook.
REASONS = ("drift", "concept_drift", "schedule", "labeled_samples", "accuracy")
# Reasons whose episodes are one-shot (see the module docstring).
ONE_SHOT = ("schedule", "labeled_samples")


def accuracy_breached(metrics: WindowMetrics | None, spec: AccuracyTrigger) -> bool | None:
    """Whether the window breaks the SLO; None while it has too few labels to say."""
    if metrics is None or metrics.samples < spec.min_samples:
        return None
    return metrics.accuracy < spec.min


def concept_drifted(
    current: WindowMetrics | None, reference: WindowMetrics | None, max_drop: float
) -> bool | None:
    """Whether the accuracy fell `max_drop` or more under the reference's; None without
    a reference (the version's window has not filled once yet) or a current window."""
    if current is None or reference is None:
        return None
    # Rounded: 0.9 - 0.8 is 0.0999..., which must count as a drop of 0.1.
    return round(reference.accuracy - current.accuracy, 9) >= max_drop


@dataclass(slots=True)
class _Schedule:
    cron: Cron
    next_at: float | None
    # The time that came due, while its episode's actions are not all done: the
    # episode is stamped with it (its window file, its id), not with when the worker
    # got to it, so a late tick never moves a run off its schedule's time.
    due_at: float | None = None


class Triggers:
    """When the schedules and data thresholds of every route come due."""

    def __init__(self) -> None:
        self._schedules: dict[str, _Schedule] = {}
        self._since: dict[Key, int] = {}  # labels since the last data-threshold fire

    def configure(self, route: str, spec: TriggersSpec, now: float) -> None:
        """Follow a route's triggers (a schedule that did not change keeps its time)."""
        if spec.schedule is None:
            self._schedules.pop(route, None)
            return
        current = self._schedules.get(route)
        if current is not None and current.cron.text == spec.schedule:
            return
        cron = Cron.parse(spec.schedule)
        self._schedules[route] = _Schedule(cron, cron.next_after(now))

    def forget_route(self, route: str) -> None:
        self._schedules.pop(route, None)
        for key in [k for k in self._since if k[0] == route]:
            del self._since[key]

    def labeled(self, key: Key, count: int = 1) -> None:
        self._since[key] = self._since.get(key, 0) + count

    def since(self, key: Key) -> int:
        """Labels of `key` not yet passed on by a data-threshold fire."""
        return self._since.get(key, 0)

    def threshold_due(self, key: Key, every: int | None) -> bool:
        return every is not None and self._since.get(key, 0) >= every

    def threshold_done(self, key: Key, every: int) -> None:
        """One data-threshold episode passed `every` labels on (more may be waiting)."""
        self._since[key] = max(0, self._since.get(key, 0) - every)

    def due_schedules(self, now: float) -> list[tuple[str, float]]:
        """Routes whose schedule is due now (came due, or its episode is unfinished),
        each with the scheduled time its episode is for. Times missed while an earlier
        one was unfinished, or between two ticks, are not run twice: one per tick."""
        for schedule in self._schedules.values():
            if schedule.next_at is not None and now >= schedule.next_at:
                if schedule.due_at is None:
                    schedule.due_at = schedule.next_at
                schedule.next_at = schedule.cron.next_after(now)
        return sorted((r, s.due_at) for r, s in self._schedules.items() if s.due_at is not None)

    def schedule_done(self, route: str) -> None:
        schedule = self._schedules.get(route)
        if schedule is not None:
            schedule.due_at = None

    def next_schedule(self, route: str) -> float | None:
        schedule = self._schedules.get(route)
        return None if schedule is None else schedule.next_at
