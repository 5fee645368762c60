"""The per-process side of feedback: plain ids, the counts, and the body's parsing.

Signed ids (`ids`) need no memory. Plain ids (a client's own `x-request-id`, or any id
of a request that could not be signed) are attributed by this process alone, from what
it remembers for a bounded window:

- the request path records one entry per completed request with a plain id on a route
  with an `experiment` or `rollout` block (`ExposureLog.record`, from
  `Exchange._complete`): one dict store of a tuple.
- memory is bounded by two generations of at most capacity/2 entries each: when the
  current one fills up it becomes the previous one and the older is dropped whole, so
  there is no per-request eviction work. An entry older than `window` seconds is
  expired even if still held.

Counts live here as plain numbers (per route, variant and version, so a new challenger
version starts from zero), whichever id the feedback came with; the statistics (z-test,
Welch's t-test) are computed off the request path by `gateway.rollout.experiments`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.dataplane.feedback.groundtruth import normalise_label
from gateway.dataplane.feedback.ids import (
    MAX_PREDICTION_ID,
    MAX_SIGNED_ID,
    PREDICTION_PREFIX,
    SIGNED_PREFIX,
)
from gateway.errors import (
    BadRequest,
    FeedbackConflict,
    FeedbackStoreUnavailable,
    GatewayError,
    InvalidJSON,
    RequestExpired,
    UnknownRequest,
)
from gateway.observability.metrics import RequestSeries

FEEDBACK_PATH = b"/v1/feedback"
_FIELDS = ("request_id", "outcome", "reward", "label")
_MAX_LABEL = 255  # bytes of UTF-8 of a label's text (classes beyond the route's: other)
_MAX_REQUEST_ID = 128  # a plain id, as the HTTP server accepts a client's x-request-id
_SIGNED = SIGNED_PREFIX.decode()
_PREDICTION = PREDICTION_PREFIX.decode()
# (who served it, plane.now when it completed, its signed id or b"")
Entry = tuple[RequestSeries, float, bytes]


@dataclass(eq=False, slots=True)
class VariantOutcomes:
    """Feedback received for one (route, variant, version)."""

    route: str
    variant: str
    version: str
    outcomes: int = 0  # feedback carrying `outcome`
    conversions: int = 0  # ... of which outcome was true
    rewards: int = 0  # feedback carrying `reward`
    # Plain sums, not a running mean: counts of several processes (workers, replicas)
    # merge by adding them, which is how Prometheus and the supervisor combine series.
    reward_sum: float = 0.0
    reward_squares: float = 0.0  # sum of squared rewards, for the variance

    def add(self, outcome: bool | None, reward: float | None) -> None:
        """Count one feedback."""
        if outcome is not None:
            self.outcomes += 1
            self.conversions += int(outcome)
        if reward is not None:
            self.rewards += 1
            self.reward_sum += reward
            self.reward_squares += reward * reward

    @property
    def reward_mean(self) -> float:
        """Mean reward (0 with none)."""
        return self.reward_sum / self.rewards if self.rewards else 0.0

    @property
    def reward_variance(self) -> float:
        """Sample variance of the rewards (0 with fewer than two)."""
        n = self.rewards
        if n < 2:
            return 0.0
        # Clamped: with sums, rounding can make a zero variance slightly negative.
        return max(0.0, (self.reward_squares - self.reward_sum * self.reward_sum / n) / (n - 1))


@dataclass(eq=False, slots=True)
class ExposureLog:
    """Which variant served each recent request id, and the feedback counted so far."""

    capacity: int = 100_000
    window: float = 3600.0
    routes: frozenset[str] = frozenset()  # routes that track requests (set by the control plane)
    outcomes: dict[tuple[str, str, str], VariantOutcomes] = field(default_factory=dict)
    # Feedback requests answered, by result: recorded, malformed, unknown, expired,
    # duplicate, unavailable (the claims store did not answer).
    results: dict[str, int] = field(default_factory=dict)
    _current: dict[bytes, Entry] = field(default_factory=dict)
    _previous: dict[bytes, Entry] = field(default_factory=dict)
    _answered: set[bytes] = field(default_factory=set)
    _answered_before: set[bytes] = field(default_factory=set)

    def record(
        self, request_id: bytes, series: RequestSeries, now: float, signed: bytes = b""
    ) -> None:
        """Remember who served `request_id` (request path: keep it this cheap), and the
        signed id the response also carried, so feedback by either id counts once."""
        if series.route in self.routes:
            current = self._current
            current[request_id] = (series, now, signed)
            if len(current) * 2 >= self.capacity:
                self._rotate()

    def _rotate(self) -> None:
        self._previous, self._current = self._current, {}
        self._answered_before, self._answered = self._answered, set()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def take(self, request_id: bytes, now: float) -> RequestSeries:
        """Who served `request_id`, marking its feedback as given; raises a 404 or 409."""
        shown = request_id.decode("utf-8", "replace")
        if request_id in self._answered or request_id in self._answered_before:
            raise FeedbackConflict(
                f"feedback for request {shown!r} was already recorded; each request counts once",
                param="request_id",
            )
        entry = self._current.pop(request_id, None)
        if entry is None:
            entry = self._previous.pop(request_id, None)
        if entry is None:
            raise UnknownRequest(
                f"request {shown!r} is unknown: no request with this x-request-id was served "
                "by this gateway process on a route with an experiment or rollout block "
                f"within the last {self.window:g}s (a client's own x-request-id is known "
                "only to the process that served it: send the response's "
                "x-switchyard-feedback-id instead, which any process accepts)",
                param="request_id",
            )
        series, served_at, _ = entry
        if now - served_at > self.window:
            raise RequestExpired(
                f"request {shown!r} expired: it was served {now - served_at:.0f}s ago and "
                f"feedback is accepted for {self.window:g}s",
                param="request_id",
            )
        self._answered.add(request_id)
        return series

    def holds(self, request_id: bytes) -> bool:
        """Whether `request_id` is a plain id this process remembers."""
        return request_id in self._current or request_id in self._previous

    def signed_id_of(self, request_id: bytes) -> bytes:
        """The signed id of the request with plain id `request_id`, or b"" (unknown here,
        or served without one). Feedback by a plain id that has one is claimed under it,
        like feedback by the signed id itself, so the request counts once either way."""
        entry = self._current.get(request_id)
        if entry is None:
            entry = self._previous.get(request_id)
        return b"" if entry is None else entry[2]

    def count(self, series: RequestSeries, outcome: bool | None, reward: float | None) -> None:
        """Add one feedback to the served variant's counts."""
        self.count_for(series.route, series.variant, series.version, outcome, reward)

    def count_for(
        self, route: str, variant: str, version: str, outcome: bool | None, reward: float | None
    ) -> None:
        """Add one feedback to the counts of (route, variant, version)."""
        key = (route, variant, version)
        found = self.outcomes.get(key)
        if found is None:
            found = self.outcomes[key] = VariantOutcomes(*key)
        found.add(outcome, reward)

    def counted(self, result: str) -> None:
        self.results[result] = self.results.get(result, 0) + 1


@dataclass(frozen=True, slots=True)
class Feedback:
    """One parsed feedback body: at least one of outcome, reward and label is set."""

    request_id: bytes
    outcome: bool | None
    reward: float | None
    label: str | None  # the true class as text ("fraud", "1", "true"); see groundtruth


def parse_feedback(body: bytes) -> tuple[bytes, bool | None, float | None]:
    """(request id, outcome, reward) of a feedback body, or a 400 saying what is wrong."""
    found = read_feedback(body)
    return found.request_id, found.outcome, found.reward


def read_feedback(body: bytes) -> Feedback:
    """A feedback body, or a 400 saying what is wrong."""
    if not body:
        raise InvalidJSON(
            'feedback body is empty; expected {"request_id": "...", "outcome": true} '
            'or {"request_id": "...", "reward": 1.0}'
        )
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"feedback body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidJSON(f"feedback body must be a JSON object, not {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(unknown)}; feedback takes {', '.join(_FIELDS)}",
            param=unknown[0],
        )
    rid = data.get("request_id")
    if not isinstance(rid, str) or not rid or len(rid) > _longest(rid):
        raise BadRequest(
            "'request_id' is required: the x-request-id or x-switchyard-feedback-id header "
            f"of the response (a string of 1 to {_MAX_REQUEST_ID} characters, or a signed "
            f"id 'fb1.<payload>.<mac>' of up to {MAX_SIGNED_ID}, 'fb2.<payload>."
            f"<prediction>.<mac>' of up to {MAX_PREDICTION_ID})",
            param="request_id",
        )
    outcome = data.get("outcome")
    if outcome is not None and not isinstance(outcome, bool):
        raise BadRequest("'outcome' must be true or false", param="outcome")
    reward = data.get("reward")
    if reward is not None:
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            raise BadRequest("'reward' must be a number", param="reward")
        reward = float(reward)  # finite: orjson refuses NaN and Infinity when parsing
    raw_label = data.get("label")
    label: str | None = None
    if raw_label is not None:
        label = normalise_label(raw_label)
        if label is None or not label or len(label.encode()) > _MAX_LABEL:
            raise BadRequest(
                "'label' must be the true class: a non-empty string (at most "
                f"{_MAX_LABEL} bytes), an integer or true/false",
                param="label",
            )
    if outcome is None and reward is None and label is None:
        raise BadRequest(
            "feedback needs 'outcome' (true/false), 'reward' (a number) or 'label' (the "
            "true class), or several",
            param="outcome",
        )
    return Feedback(rid.encode(), outcome, reward, label)


def _longest(rid: str) -> int:
    if rid.startswith(_SIGNED):
        return MAX_SIGNED_ID
    return MAX_PREDICTION_ID if rid.startswith(_PREDICTION) else _MAX_REQUEST_ID


def result_of(err: GatewayError) -> str:
    """How a refused feedback is counted: duplicate, expired, unknown, unavailable or
    malformed."""
    if isinstance(err, FeedbackConflict):
        return "duplicate"
    if isinstance(err, RequestExpired):
        return "expired"
    if isinstance(err, UnknownRequest):
        return "unknown"
    if isinstance(err, FeedbackStoreUnavailable):
        return "unavailable"
    return "malformed"
