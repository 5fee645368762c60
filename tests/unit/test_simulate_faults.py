"""Fault rules and `x-sim-*` headers -> per-request fault plans."""

from __future__ import annotations

import pytest

from gateway.simulate.faults import (
    NO_FAULTS,
    FaultInjector,
    FaultPlan,
    FaultRule,
    FaultSpecError,
    parse_fault,
)


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        ("status=503:0.1", FaultRule("status", 503, 0.1)),
        ("status=500", FaultRule("status", 500, 1.0)),
        ("cut=3:0.05", FaultRule("cut", 3, 0.05)),
        ("hang:0.01", FaultRule("hang", 0, 0.01)),
        ("garbage", FaultRule("garbage", 0, 1.0)),
        ("reset:0.25", FaultRule("reset", 0, 0.25)),
        ("latency=250:0.2", FaultRule("latency", 250, 0.2)),
        (" Chunk-Delay=5 ", FaultRule("chunk-delay", 5, 1.0)),
    ],
)
def test_parse_fault(spec: str, rule: FaultRule) -> None:
    assert parse_fault(spec) == rule
    assert parse_fault(rule.spec()) == rule


@pytest.mark.parametrize(
    "spec",
    [
        "explode:0.1",
        "status=200:0.1",
        "status=503.5",
        "status:0.5",
        "status=abc",
        "cut=1.5",
        "cut=-1",
        "hang=3",
        "latency=-5",
        "latency=nan",
        "status=503:1.5",
        "status=503:x",
    ],
)
def test_parse_fault_rejects(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse_fault(spec)


def test_no_rules_no_headers_is_the_shared_empty_plan() -> None:
    injector = FaultInjector()
    assert injector.plan({"content-type": "application/json"}) is NO_FAULTS


def test_headers_program_one_request() -> None:
    plan = FaultInjector().plan(
        {
            "x-sim-latency-ms": "150",
            "x-sim-chunk-delay-ms": "2.5",
            "x-sim-tokens": "7",
            "x-sim-status": "429",
            "x-sim-cut-after": "3",
            "x-sim-hang": "1",
            "x-sim-garbage": "false",
        }
    )
    assert plan == FaultPlan(
        latency_s=0.15,
        chunk_delay_s=0.0025,
        tokens=7,
        status=429,
        cut_after=3,
        hang=True,
        garbage=False,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-sim-status", "200"),
        ("x-sim-status", "oops"),
        ("x-sim-tokens", "-1"),
        ("x-sim-tokens", "2.5"),
        ("x-sim-latency-ms", "-1"),
        ("x-sim-cut-after", "x"),
    ],
)
def test_bad_header_values_raise(name: str, value: str) -> None:
    with pytest.raises(FaultSpecError):
        FaultInjector().plan({name: value})


def test_rates_zero_and_one() -> None:
    always = FaultInjector([FaultRule("status", 503, 1.0), FaultRule("cut", 2, 1.0)], seed=1)
    never = FaultInjector([FaultRule("status", 503, 0.0)], seed=1)
    for _ in range(50):
        assert always.plan({}) == FaultPlan(status=503, cut_after=2)
        assert never.plan({}) == NO_FAULTS


def test_rates_are_roughly_honoured_and_seeded() -> None:
    rules = [FaultRule("status", 503, 0.3), FaultRule("hang", 0, 0.1)]
    a = FaultInjector(rules, seed=7)
    b = FaultInjector(rules, seed=7)
    plans_a = [a.plan({}) for _ in range(2000)]
    plans_b = [b.plan({}) for _ in range(2000)]
    assert plans_a == plans_b  # same seed, same sequence
    share = sum(p.status == 503 for p in plans_a) / len(plans_a)
    assert 0.25 < share < 0.35
    hangs = sum(p.hang for p in plans_a) / len(plans_a)
    assert 0.06 < hangs < 0.14


def test_header_overrides_rule() -> None:
    injector = FaultInjector([FaultRule("status", 503, 1.0), FaultRule("latency", 100, 1.0)])
    plan = injector.plan({"x-sim-status": "502", "x-sim-latency-ms": "0"})
    assert plan.status == 502
    assert plan.latency_s == 0.0


def test_first_rule_of_a_kind_wins() -> None:
    injector = FaultInjector([FaultRule("status", 503, 1.0), FaultRule("status", 500, 1.0)])
    assert injector.plan({}).status == 503


def test_rules_replaceable_at_runtime() -> None:
    injector = FaultInjector()
    injector.set_rules([parse_fault("status=500")])
    assert injector.plan({}).status == 500
    injector.set_rules([])
    assert injector.plan({}) is NO_FAULTS
