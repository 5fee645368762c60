"""A rollout's state: what step it is on, what happened so far, and the weights it implies.

The state is the single source of truth every replica acts on. The writer (the one
process holding the rollout lock) changes it and stores it (a registered-model tag in
the registry, or a local file); every other replica reads it and applies the weights it
implies, so a restarted gateway or another replica resumes instead of starting over.
Only data here: JSON in, JSON out, and pure functions of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import orjson

from gateway.controlplane.policy.schema import RoutingPolicy
from gateway.dataplane.snapshot import Route
from gateway.rollout.weights import VariantKey, rolled_back_weights, step_weights

Status = Literal["progressing", "paused", "rolled_back", "aborted", "promoted", "completed"]
STATE_FORMAT = 1
MAX_HISTORY = 40  # events kept in the state (an MLflow tag value holds 100 kB)
# States in which the challenger is out of the split.
OUT = ("rolled_back", "aborted")
# States that no longer step: only an operator (resume) or a new challenger version moves them.
SETTLED = ("rolled_back", "aborted", "promoted", "completed")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a rollout."""

    at: float  # unix time
    event: str  # started, step, rollback, promoted, completed, paused, resumed, aborted, restarted
    step: int  # 1-based step after the event (0: out of the split)
    percent: float  # the challenger's share after the event
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Where one route's rollout stands."""

    route: str
    challenger: str  # variant name
    subject: str  # what is rolled out: the challenger's version, or its endpoints
    champion_version: (
        str  # what the champion served when the rollout started (version or endpoints)
    )
    status: Status
    step: int  # 0-based index into `steps`
    steps: tuple[float, ...]
    percent: float  # the challenger's share now
    started_at: float
    step_started_at: float
    updated_at: float
    writer: str = ""  # who last wrote this state
    command: str = ""  # id of the last operator command applied
    promoted_to: str = ""  # alias moved on promotion
    previous_champion: str = ""  # version the alias pointed at before (for rollback)
    history: tuple[Event, ...] = ()

    @property
    def step_number(self) -> int:
        """1-based step now serving; 0 when the challenger is out of the split."""
        return 0 if self.status in OUT else self.step + 1

    def with_event(self, event: str, now: float, reason: str = "", **changes: Any) -> RolloutState:
        """A copy with `changes` applied and `event` appended to the history."""
        details = changes.pop("details", {})
        moved = replace(self, updated_at=now, **changes)
        percent = 0.0 if moved.status in OUT else moved.percent
        record = Event(now, event, moved.step_number, percent, reason, details)
        return replace(moved, history=(*moved.history, record)[-MAX_HISTORY:])

    def to_json(self) -> bytes:
        data = asdict(self)
        data["format"] = STATE_FORMAT
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> RolloutState:
        """Parse a stored state; `ValueError` if it is not one."""
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or data.pop("format", None) != STATE_FORMAT:
                raise ValueError("not a rollout state of this format")
            history = tuple(Event(**e) for e in data.pop("history", ()))
            data["steps"] = tuple(float(s) for s in data["steps"])
            return cls(**data, history=history)
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            raise ValueError(f"unreadable rollout state: {exc}") from None

    def view(self) -> dict[str, Any]:
        """The state as the admin API and CLI show it."""
        data = asdict(self)
        data["step"] = self.step_number
        data["percent"] = 0.0 if self.status in OUT else self.percent
        data["of_steps"] = len(self.steps)
        data["history"] = [asdict(e) for e in self.history]
        return data


def start(
    policy: RoutingPolicy, challenger: str, subject: str, champion: str, writer: str, now: float
) -> RolloutState:
    """A new rollout at its first step."""
    assert policy.rollout is not None
    steps = tuple(policy.rollout.steps)
    state = RolloutState(
        route=policy.route,
        challenger=challenger,
        subject=subject,
        champion_version=champion,
        status="progressing",
        step=0,
        steps=steps,
        percent=steps[0],
        started_at=now,
        step_started_at=now,
        updated_at=now,
        writer=writer,
    )
    return state.with_event(
        "started",
        now,
        f"rolling out {challenger} ({subject}) against champion ({champion})",
    )


def champion_variant(policy: RoutingPolicy, state: RolloutState) -> str | None:
    """The variant that follows the alias promotion moves (models:/NAME@promote_to)."""
    if policy.rollout is None:
        return None
    alias = "@" + policy.rollout.promote_to
    for variant in policy.variants:
        if variant.name != state.challenger and (variant.target or "").endswith(alias):
            return variant.name
    return None


def implied_weights(
    state: RolloutState, policy: RoutingPolicy, route: Route | None
) -> dict[VariantKey, float]:
    """The weight overrides `state` implies for its route (empty: the policy's own).

    After a promotion the last step's weights stay until the champion variant serves
    the promoted version (the registry poll catches up), so traffic never swings back
    to the old version in between.
    """
    if state.status in OUT:
        return rolled_back_weights(policy, state.challenger)
    if state.status == "promoted":
        name = champion_variant(policy, state)
        serving = None
        if route is not None and name is not None:
            serving = next((v.version for v in route.variants if v.name == name), None)
        if name is None or serving == state.subject:
            return {}
    return step_weights(policy, state.challenger, state.percent)


def transition(state: RolloutState, action: str, now: float, by: str = "") -> RolloutState:
    """Apply an operator's `pause`, `resume` or `abort`; `ValueError` says why not.

    `resume` continues a paused rollout at its step, and restarts a rolled-back or
    aborted one from its first step (the operator judged the challenger fixed).
    """
    who = f" by {by}" if by else ""
    if action == "pause":
        if state.status != "progressing":
            raise ValueError(f"cannot pause a rollout that is {state.status}")
        return state.with_event("paused", now, f"paused{who}", status="paused")
    if action == "resume":
        if state.status == "paused":
            return state.with_event(
                "resumed", now, f"resumed{who}", status="progressing", step_started_at=now
            )
        if state.status in OUT:
            return state.with_event(
                "restarted",
                now,
                f"restarted from the first step{who}",
                status="progressing",
                step=0,
                percent=state.steps[0],
                step_started_at=now,
            )
        raise ValueError(f"cannot resume a rollout that is {state.status}")
    if action == "abort":
        if state.status in ("progressing", "paused", "completed"):
            return state.with_event("aborted", now, f"aborted{who}", status="aborted")
        hint = " (use `switchyard registry rollback`)" if state.status == "promoted" else ""
        raise ValueError(f"cannot abort a rollout that is {state.status}{hint}")
    raise ValueError(f"unknown action {action!r}: use pause, resume or abort")
