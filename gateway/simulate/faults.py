"""Fault injection and per-request control, shared by every simulator.

Two sources, one result (a `FaultPlan` per request):

- request headers program one request exactly (like Envoy AI Gateway's test upstream):
  `x-sim-latency-ms`, `x-sim-chunk-delay-ms`, `x-sim-tokens`, `x-sim-status`,
  `x-sim-cut-after`, `x-sim-hang`, `x-sim-garbage`, `x-sim-reset`;
- rules (`--fault`, `POST /sim/faults`) apply the same behaviours to a share of requests,
  drawn from a seeded RNG so a run can be repeated.

A header wins over a rule for the same behaviour. Simulators decide how a plan is
rendered (an OpenAI error body, an Ollama one, ...); transport faults look the same
everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

FaultKind = Literal["status", "cut", "hang", "garbage", "reset", "latency", "chunk-delay"]
"""What a rule does to a request it hits."""

FAULT_KINDS: Final[tuple[FaultKind, ...]] = (
    "status",
    "cut",
    "hang",
    "garbage",
    "reset",
    "latency",
    "chunk-delay",
)

FAULT_SYNTAX: Final = """\
fault rules (--fault, repeatable; also POST /sim/faults {"faults": [...]}):
  KIND[=VALUE][:RATE]   RATE is the share of requests hit, 0..1 (default 1)
  status=CODE           answer CODE (400-599) with the protocol's error body
  cut=N                 stream: close after N content chunks; otherwise close
                        after the headers and half the body
  hang                  never answer (the request stays in flight until the client leaves)
  garbage               answer bytes that are not HTTP, then close
  reset                 reset the connection (TCP RST) without answering
  latency=MS            answer (or send the first chunk) after MS, not --latency-ms
  chunk-delay=MS        wait MS between stream chunks, not --chunk-delay-ms
  e.g. --fault status=503:0.1 --fault cut=3:0.05 --fault latency=250:0.2

per-request headers (override the rules): x-sim-status, x-sim-latency-ms,
  x-sim-chunk-delay-ms, x-sim-tokens, x-sim-cut-after, x-sim-hang: 1, x-sim-garbage: 1,
  x-sim-reset: 1
"""

GARBAGE: Final = b"\x16\x03\x01\x00\xa5 switchyard-sim garbage: this is not HTTP \x00\xff\r\n\r\n"
"""What the garbage fault writes: starts like a TLS record so no HTTP parser accepts it."""

HEADER_NAMES: Final = (
    "x-sim-latency-ms",
    "x-sim-chunk-delay-ms",
    "x-sim-tokens",
    "x-sim-status",
    "x-sim-cut-after",
    "x-sim-hang",
    "x-sim-garbage",
    "x-sim-reset",
)


_NO_VALUE: Final = frozenset({"hang", "garbage", "reset"})


class FaultSpecError(ValueError):
    """A fault rule or an `x-sim-*` header value that cannot be understood."""


@dataclass(frozen=True, slots=True)
class FaultRule:
    """One `--fault` rule: do `kind` (with `value`) to a share `rate` of requests."""

    kind: FaultKind
    value: float = 0.0
    rate: float = 1.0

    def spec(self) -> str:
        """The rule in `--fault` syntax."""
        value = "" if self.kind in _NO_VALUE else f"={self.value:g}"
        return f"{self.kind}{value}:{self.rate:g}"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do to one request; None means "the simulator's default"."""

    latency_s: float | None = None
    chunk_delay_s: float | None = None
    tokens: int | None = None
    status: int | None = None
    cut_after: int | None = None
    hang: bool = False
    garbage: bool = False
    reset: bool = False


NO_FAULTS: Final = FaultPlan()


def parse_fault(spec: str) -> FaultRule:
    """Parse `KIND[=VALUE][:RATE]` (see `FAULT_SYNTAX`)."""
    head, _, rate_text = spec.strip().partition(":")
    kind_text, has_value, value_text = head.partition("=")
    kind_text = kind_text.strip().lower()
    if kind_text not in FAULT_KINDS:
        raise FaultSpecError(f"unknown fault kind {kind_text!r} in {spec!r}")
    kind: FaultKind = kind_text
    rate = _number(rate_text, spec, "rate") if rate_text else 1.0
    if not 0.0 <= rate <= 1.0:
        raise FaultSpecError(f"rate must be between 0 and 1 in {spec!r}")
    if kind in _NO_VALUE:
        if has_value:
            raise FaultSpecError(f"{kind} takes no value in {spec!r}")
        return FaultRule(kind, 0.0, rate)
    if not has_value:
        raise FaultSpecError(f"{kind} needs a value ({kind}=VALUE) in {spec!r}")
    value = _number(value_text, spec, "value")
    if kind == "status":
        _check_status(value, spec)
    elif kind == "cut" and (value < 0 or value != int(value)):
        raise FaultSpecError(f"cut needs a whole number of chunks in {spec!r}")
    elif value < 0:
        raise FaultSpecError(f"{kind} must not be negative in {spec!r}")
    return FaultRule(kind, value, rate)


class FaultInjector:
    """Turns headers and rules into a `FaultPlan` for each request.

    Holds the live rule set (replaceable at runtime through `POST /sim/faults`) and the
    status `/health` answers, so a test can make a backend unhealthy without killing it.
    """

    __slots__ = ("_rng", "_rules", "health_status")

    def __init__(self, rules: Sequence[FaultRule] = (), seed: int | None = None) -> None:
        self._rules = tuple(rules)
        self._rng = random.Random(seed)
        self.health_status = 200

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        """The rules in force."""
        return self._rules

    def set_rules(self, rules: Sequence[FaultRule]) -> None:
        """Replace the rules in force."""
        self._rules = tuple(rules)

    def plan(self, headers: Mapping[str, str]) -> FaultPlan:
        """The plan for one request; raises `FaultSpecError` on a bad `x-sim-*` header."""
        rules = self._rules
        for name in HEADER_NAMES:
            if name in headers:
                break
        else:
            if not rules:
                return NO_FAULTS  # the load-test path: no allocation, no RNG draw
        plan = self._roll(rules) if rules else NO_FAULTS
        return _apply_headers(plan, headers)

    def _roll(self, rules: tuple[FaultRule, ...]) -> FaultPlan:
        rng = self._rng
        plan = NO_FAULTS
        for rule in rules:
            if rng.random() >= rule.rate:
                continue
            kind = rule.kind
            # The first rule that hits decides a behaviour; later ones of its kind lose.
            if kind == "status" and plan.status is None:
                plan = replace(plan, status=int(rule.value))
            elif kind == "cut" and plan.cut_after is None:
                plan = replace(plan, cut_after=int(rule.value))
            elif kind == "latency" and plan.latency_s is None:
                plan = replace(plan, latency_s=rule.value / 1000.0)
            elif kind == "chunk-delay" and plan.chunk_delay_s is None:
                plan = replace(plan, chunk_delay_s=rule.value / 1000.0)
            elif kind == "hang":
                plan = replace(plan, hang=True)
            elif kind == "garbage":
                plan = replace(plan, garbage=True)
            elif kind == "reset":
                plan = replace(plan, reset=True)
        return plan


def _apply_headers(plan: FaultPlan, headers: Mapping[str, str]) -> FaultPlan:
    get = headers.get
    latency, chunk_delay, tokens = (get(name) for name in HEADER_NAMES[:3])
    status, cut_after, hang, garbage, reset = (get(name) for name in HEADER_NAMES[3:])
    return FaultPlan(
        latency_s=plan.latency_s if latency is None else _millis(latency, "x-sim-latency-ms"),
        chunk_delay_s=(
            plan.chunk_delay_s
            if chunk_delay is None
            else _millis(chunk_delay, "x-sim-chunk-delay-ms")
        ),
        tokens=plan.tokens if tokens is None else _count(tokens, "x-sim-tokens"),
        status=plan.status if status is None else _status_header(status),
        cut_after=plan.cut_after if cut_after is None else _count(cut_after, "x-sim-cut-after"),
        hang=plan.hang if hang is None else _flag(hang),
        garbage=plan.garbage if garbage is None else _flag(garbage),
        reset=plan.reset if reset is None else _flag(reset),
    )


def _number(text: str, spec: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultSpecError(f"{what} {text!r} is not a number (in {spec!r})") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise FaultSpecError(f"{what} must be finite (in {spec!r})")
    return value


def _millis(text: str, header: str) -> float:
    value = _number(text, f"{header}: {text}", header)
    if value < 0:
        raise FaultSpecError(f"{header} must not be negative")
    return value / 1000.0


def _status_header(text: str) -> int:
    value = _number(text, f"x-sim-status: {text}", "x-sim-status")
    _check_status(value, f"x-sim-status: {text}")
    return int(value)


def _count(text: str, header: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise FaultSpecError(f"{header} {text!r} is not a whole number") from None
    if value < 0:
        raise FaultSpecError(f"{header} must not be negative")
    return value


def _check_status(value: float, spec: str) -> None:
    if value != int(value) or not 400 <= value <= 599:
        raise FaultSpecError(f"status must be an HTTP error status 400-599 (in {spec!r})")


def _flag(text: str) -> bool:
    return text.strip().lower() not in ("", "0", "false", "no", "off")
