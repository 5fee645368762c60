"""Rollout analysis: windows from request series, p99 from buckets, and the gates."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.controlplane.policy.rolloutspec import AnalysisSpec
from gateway.observability.metrics import DURATION_BUCKETS, GatewayMetrics
from gateway.rollout.analysis import Counts, judge, quantile
from gateway.stats.counts import RouteStats, Sample, route_stats, window

N = len(DURATION_BUCKETS) + 1


def buckets(**at: int) -> tuple[int, ...]:
    """Per-bucket counts with `at` = {"b<i>": count}."""
    out = [0] * N
    for key, count in at.items():
        out[int(key[1:])] = count
    return tuple(out)


def counts(responses: int, failed: int = 0, **at: int) -> Counts:
    return Counts(responses, responses - failed, failed, buckets(**at))


def test_quantile_interpolates_within_the_bucket_like_prometheus() -> None:
    # 100 observations: 90 in (0.005, 0.01], 10 in (0.01, 0.025].
    i = DURATION_BUCKETS.index(0.01)
    data = buckets(**{f"b{i}": 90, f"b{i + 1}": 10})
    # Rank 99 falls 9 of 10 into the second bucket: 0.01 + 0.015 * 9/10.
    assert quantile(0.99, data) == pytest.approx(0.01 + 0.015 * 0.9)
    assert quantile(0.5, data) == pytest.approx(0.005 + 0.005 * 50 / 90)
    assert quantile(0.99, (0,) * N) is None
    overflow = buckets(**{f"b{N - 1}": 5})  # only the +Inf bucket: the highest bound
    assert quantile(0.99, overflow) == DURATION_BUCKETS[-1]


def scrape(metrics: GatewayMetrics) -> RouteStats:
    """Route r's numbers as a gate reads them: from the rendered metrics."""
    text = generate_latest(metrics.registry()).decode()
    found = text_string_to_metric_families(text)
    return route_stats("r", [Sample(s.name, s.labels, s.value) for f in found for s in f.samples])


def test_window_subtracts_the_step_baseline_per_series() -> None:
    metrics = GatewayMetrics()
    a = metrics.series("r", "challenger", "2", "h:1")
    a.by_class[2] = 10
    a.duration.counts[3] = 10
    base = scrape(metrics)  # b did not exist when the step began
    b = metrics.series("r", "challenger", "2", "h:2")
    a.by_class[2] += 5
    a.by_class[5] += 1
    a.failed_attempts += 2  # one retried elsewhere, one answered 502
    a.duration.counts[3] += 6
    b.by_class[2] = 4
    b.duration.counts[4] = 4
    now = scrape(metrics)
    got = window(now, base).counts("challenger", "2")
    assert got.responses == 10  # 5 + 1 on a, 4 on b
    assert got.ok_attempts == 9 and got.failed_attempts == 2
    assert got.error_rate == pytest.approx(2 / 11)
    assert got.buckets[3] == 6 and got.buckets[4] == 4
    assert now.counts("challenger", "2").responses == 20


def test_judge_waits_for_min_requests_then_fails_on_the_first_gate() -> None:
    spec = AnalysisSpec(min_requests=100, max_error_rate=0.01, max_p99_latency_ratio=1.5)
    fast = DURATION_BUCKETS.index(0.01)
    early = judge(spec, counts(99, 10, **{f"b{fast}": 99}), counts(500, **{f"b{fast}": 500}))
    assert early.outcome == "wait" and "99 of the 100" in early.reason

    bad = judge(spec, counts(200, 10, **{f"b{fast}": 200}), counts(500, **{f"b{fast}": 500}))
    assert bad.outcome == "fail"
    assert bad.gates[0].name == "error_rate" and bad.gates[0].outcome == "fail"
    assert bad.gates[0].value == pytest.approx(10 / 200)
    assert "10 of 200 upstream attempts failed" in bad.reason


def test_latency_gate_compares_p99_with_the_champion_or_its_last_known_p99() -> None:
    spec = AnalysisSpec(min_requests=10, max_p99_latency_ratio=1.5)
    fast, slow = DURATION_BUCKETS.index(0.01), DURATION_BUCKETS.index(0.05)
    champion = counts(100, **{f"b{fast}": 100})
    ok = judge(spec, counts(50, **{f"b{fast}": 50}), champion)
    assert ok.outcome == "pass"
    assert ok.gates[1].value == pytest.approx(1.0)
    slowed = judge(spec, counts(50, **{f"b{slow}": 50}), champion)
    assert slowed.outcome == "fail" and slowed.gates[1].name == "p99_latency_ratio"
    assert slowed.gates[1].value == pytest.approx((0.025 + 0.025 * 0.99) / (0.005 + 0.005 * 0.99))
    # At 100% the champion serves nothing: its last p99 stands in.
    alone = judge(spec, counts(50, **{f"b{slow}": 50}), Counts(), champion_p99=0.1)
    assert alone.outcome == "pass" and alone.gates[1].value == pytest.approx(
        0.049752 / 0.1, rel=1e-4
    )
    # No champion latency at all: the gate cannot judge, so it does not fail.
    assert judge(spec, counts(50, **{f"b{slow}": 50}), Counts()).outcome == "pass"


def test_absolute_p99_gate_as_design_shows_it() -> None:
    # DESIGN.md's rollout example: `analysis: {max_p99_latency: 500ms}`.
    spec = AnalysisSpec.model_validate({"min_requests": 10, "max_p99_latency": "500ms"})
    assert spec.max_p99_latency == pytest.approx(0.5)
    fast, slow = DURATION_BUCKETS.index(0.25), DURATION_BUCKETS.index(1.0)
    ok = judge(spec, counts(50, **{f"b{fast}": 50}), Counts())
    assert ok.outcome == "pass" and ok.gates[1].name == "p99_latency"
    assert ok.gates[1].value is not None and ok.gates[1].value <= 0.25
    slowed = judge(spec, counts(50, **{f"b{slow}": 50}), Counts())
    assert slowed.outcome == "fail" and slowed.gates[1].name == "p99_latency"
    assert "limit 500.0 ms" in slowed.reason


def test_shadow_gate_waits_without_comparisons_and_fails_below_the_floor() -> None:
    spec = AnalysisSpec(min_requests=1, min_shadow_agreement=0.9)
    fine = counts(10, b5=10)
    assert judge(spec, fine, fine, shadow=None).outcome == "wait"
    assert judge(spec, fine, fine, shadow=(95, 100)).outcome == "pass"
    low = judge(spec, fine, fine, shadow=(80, 100))
    assert low.outcome == "fail" and "80 of 100 mirrored answers agreed" in low.reason
