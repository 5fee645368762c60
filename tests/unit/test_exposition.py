"""The gateway's own metric families and renderers write what prometheus-client writes.

`gateway.observability.exposition` replaces prometheus-client in the serving process
(its package imports an HTTP server and a push gateway: RSS a worker keeps). What it
renders must stay byte for byte what prometheus-client's `generate_latest` and
OpenMetrics `generate_latest` render for the same families, so prometheus-client, still
a dependency, is the oracle here: the same families are built with both libraries'
classes and rendered by both, and the output parses back with its parsers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import ModuleType, SimpleNamespace
from typing import Any

import prometheus_client.core as prom
import pytest
from prometheus_client import generate_latest as prom_text
from prometheus_client.metrics_core import Metric as PromMetric
from prometheus_client.openmetrics.exposition import generate_latest as prom_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Exemplar as PromExemplar
from prometheus_client.samples import Sample as PromSample

from gateway.observability import exposition as ours
from gateway.observability.exposition import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    Metric,
    format_float,
    generate_openmetrics,
    generate_text,
)
from gateway.observability.metrics import GatewayMetrics, RouteCounters

# prometheus-client's classes under the names ours have.
PROM = SimpleNamespace(
    CounterMetricFamily=prom.CounterMetricFamily,
    GaugeMetricFamily=prom.GaugeMetricFamily,
    HistogramMetricFamily=prom.HistogramMetricFamily,
    InfoMetricFamily=prom.InfoMetricFamily,
    Exemplar=PromExemplar,
)

# Label values and help texts with everything the formats escape, and some they don't.
AWKWARD = ["back\\slash", 'quo"te', "new\nline", "", "ünïcødé ✓", "tab\tand spaces  ", "{a=b}"]
FLOATS = [
    0,
    1,
    -1,
    0.0,
    -0.0,
    1.5,
    1e-9,
    5e-324,
    123456.7,
    1234567.0,
    1000000.0,
    -1234567.0,
    123456789.123,
    1e15,
    1e16,
    1.7976931348623157e308,
    2**53 + 1,
    2**63,
    math.inf,
    -math.inf,
    math.nan,
]


def build(lib: ModuleType | SimpleNamespace, *, parseable: bool = True) -> list[Any]:
    """The same families, with `lib`'s classes, called as the gateway's collectors call
    them. `parseable=False` adds names the legacy charset lacks: renderers escape them,
    parsers reject them."""
    C, G, H, I, E = (  # noqa: E741 (the families' initials)
        lib.CounterMetricFamily,
        lib.GaugeMetricFamily,
        lib.HistogramMetricFamily,
        lib.InfoMetricFamily,
        lib.Exemplar,
    )
    out: list[Any] = []

    requests = C(
        "switchyard_requests",
        'Requests: a "help" text with a \\ backslash\nand a newline.',
        labels=["route", "variant"],
    )
    for i, value in enumerate(AWKWARD):
        requests.add_metric([value, f"v{i}"], i * 3)
    out.append(requests)

    total = C("switchyard_things_total", "A name given with its _total.", labels=["kind"])
    total.add_metric(["a"], 7, created=1_700_000_000.25)
    total.add_metric(["b"], 0.5, created=1_700_000_001.0)
    out.append(total)

    traced = C("switchyard_traced", "Counter with exemplars.", labels=["route"])
    traced.add_metric(["r"], 3, exemplar=E({"trace_id": "a" * 32}, 0.25, 1_700_000_000.5))
    traced.add_metric(["s"], 4, exemplar=E({"trace_id": "f" * 16}, 1e-7))
    if not parseable:  # written as prometheus-client writes it; its parser cannot read it
        traced.add_metric(["t"], 5, exemplar=E({"trace_id": 'x"y\\z\n'}, 2.0))
    out.append(traced)

    bare = C("switchyard_bare", "No labels at all.")
    bare.add_metric([], 12)
    out.append(bare)
    out.append(C("switchyard_empty", "A family with no samples."))

    values = G("switchyard_values", "Every kind of float.", labels=["i"])
    for i, value in enumerate(FLOATS):
        values.add_metric([str(i)], value)
    out.append(values)
    one = G("switchyard_one", "One unlabelled gauge.")
    one.add_metric([], 42)
    out.append(one)

    latency = H("switchyard_latency_seconds", "A histogram with exemplars.", labels=["route"])
    latency.add_metric(
        ["chat"],
        [
            ("0.005", 1),
            ("0.01", 4, E({"trace_id": "b" * 32}, 0.007, 1_700_000_002.125)),
            ("0.5", 4),
            ("1.0", 9, E({"trace_id": "c" * 32, "span": "1"}, 0.75, 1_700_000_003.0)),
            ("+Inf", 10),
        ],
        12.5,
    )
    latency.add_metric(['q"uo\\te'], [("0.005", 0), ("+Inf", 0)], 0.0)
    latency.add_metric(["big"], [("1e+06", 2**40), ("+Inf", 2**41)], 1.2345678e12)
    out.append(latency)

    info = I("switchyard_build", "Build information.")
    info.add_metric([], {"version": "1.2.3", "python": "3.11", "note": 'a "q"\n'})
    out.append(info)
    policy = I("switchyard_policy", "Policy set.", labels=["hash"])
    policy.add_metric(["abc123"], {"routes": "3"})
    out.append(policy)

    if not parseable:
        odd = G("switchyard:rate:5m", "A recording-rule name (colons).", labels=["a"])
        odd.add_metric(["x"], 1)
        out.append(odd)
        dashed = C("switchyard-dashed.name", "Characters outside the legacy charset.")
        dashed.add_metric([], 1)
        out.append(dashed)
        labels = G("switchyard_labels", "Odd label names.", labels=["1st", "a-b", "__x", "é"])
        labels.add_metric(["v1", "v2", "v3", "v4"], 2)
        out.append(labels)
        digit = G("0digit", "A name starting with a digit.")
        digit.add_metric([], 3)
        out.append(digit)
    return out


class Fixed:
    """A registry over ready families, for prometheus-client's renderers."""

    def __init__(self, families: Iterable[Any]) -> None:
        self.families = list(families)

    def collect(self) -> list[Any]:
        return self.families


@pytest.mark.parametrize("parseable", [True, False])
def test_text_format_is_prometheus_clients_byte_for_byte(parseable: bool) -> None:
    mine = generate_text(build(ours, parseable=parseable))
    theirs = prom_text(Fixed(build(PROM, parseable=parseable)))
    assert mine == theirs
    assert b"+Inf" in mine and b"-Inf" in mine and b"NaN" in mine  # what the test covers


@pytest.mark.parametrize("parseable", [True, False])
def test_openmetrics_is_prometheus_clients_byte_for_byte(parseable: bool) -> None:
    mine = generate_openmetrics(build(ours, parseable=parseable))
    theirs = prom_openmetrics(Fixed(build(PROM, parseable=parseable)))
    assert mine == theirs
    assert mine.endswith(b"# EOF\n") and b' # {trace_id="' in mine


def test_values_are_written_as_prometheus_client_writes_them() -> None:
    from prometheus_client.utils import floatToGoString

    extra = [0.1 * i for i in range(100)] + [10.0**e for e in range(-20, 25)]
    for value in [*FLOATS, *extra, *(-v for v in extra), *(v * 1.000001 for v in extra)]:
        assert format_float(value) == floatToGoString(value), value
    assert format_float(1234567.0) == "1.234567e+06"  # Go's exponent, not Python's repr


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _keyed(samples: Iterable[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
    return {(s.name, tuple(sorted(s.labels.items()))): s for s in samples}


def test_text_parses_back_to_the_families() -> None:
    built = build(ours)
    parsed = list(parse_text(generate_text(built).decode()))
    # Sample for sample; the format has no place for a counter's _created in its family
    # (a gauge family of its own) and shows info families as `_info` gauges.
    theirs = _keyed(s for f in parsed for s in f.samples)
    mine = _keyed(s for f in built for s in f.samples)
    assert theirs.keys() == mine.keys()
    for key, s in mine.items():
        assert _same(theirs[key].value, float(s.value)), key
    kinds = {f.name: (f.type, f.documentation) for f in parsed}
    for f in built:
        if f.type in ("counter", "gauge", "histogram"):
            assert kinds[f.name] == (f.type, f.documentation)
    assert kinds["switchyard_things_created"] == ("gauge", "A name given with its _total.")
    assert kinds["switchyard_build_info"] == ("gauge", "Build information.")


def test_openmetrics_parses_back_with_its_exemplars() -> None:
    built = build(ours)
    parsed = list(parse_openmetrics(generate_openmetrics(built).decode()))  # type: ignore[no-untyped-call]
    assert [(f.name, f.type, f.documentation) for f in parsed] == [
        (f.name, f.type, f.documentation) for f in built
    ]
    theirs = _keyed(s for f in parsed for s in f.samples)
    mine = [s for f in built for s in f.samples]
    assert len(theirs) == len(mine)
    exemplars = 0
    for s in mine:
        t = theirs[(s.name, tuple(sorted(s.labels.items())))]
        assert _same(t.value, float(s.value))
        if s.exemplar is None:
            assert t.exemplar is None
            continue
        exemplars += 1
        assert (t.exemplar.labels, t.exemplar.value) == (s.exemplar.labels, s.exemplar.value)
        stamp = t.exemplar.timestamp
        assert (None if stamp is None else float(stamp)) == s.exemplar.timestamp
    assert exemplars == 4


def test_an_exemplar_where_openmetrics_has_none_is_refused_as_prometheus_client_does() -> None:
    mine = ours.GaugeMetricFamily("g", "A gauge.")
    mine.samples.append(ours.Sample("g", {}, 1.0, None, ours.Exemplar({"trace_id": "a"}, 1.0)))
    theirs = prom.GaugeMetricFamily("g", "A gauge.")
    theirs.samples.append(PromSample("g", {}, 1.0, None, PromExemplar({"trace_id": "a"}, 1.0)))
    refused = "has exemplars, but is not a histogram bucket or counter"
    with pytest.raises(ValueError, match=refused):
        generate_openmetrics([mine])
    with pytest.raises(ValueError, match=refused):
        prom_openmetrics(Fixed([theirs]))


def _as_prometheus_client(families: Iterable[Metric]) -> list[PromMetric]:
    """The same families as prometheus-client objects, sample for sample."""
    out = []
    for f in families:
        m = PromMetric(f.name, f.documentation, f.type)
        for s in f.samples:
            exemplar = None if s.exemplar is None else PromExemplar(*s.exemplar)
            m.samples.append(PromSample(s.name, s.labels, s.value, s.timestamp, exemplar))
        out.append(m)
    return out


def _busy_gateway() -> GatewayMetrics:
    """A gateway's metrics with something in most families."""
    metrics = GatewayMetrics()
    for variant, backend in (("champion", "10.0.0.1:8000"), ("challenger", "10.0.0.2:8000")):
        s = metrics.series("chat", variant, "3", backend)
        s.by_class[2] += 5
        s.by_class[5] += 1
        s.by_class[0] += 1
        s.failed_attempts += 2
        s.prompt_tokens += 1000
        s.completion_tokens += 333
        for seconds in (0.00004, 0.003, 0.02, 1.5, 400.0):
            s.duration.observe(seconds)
            s.upstream.observe(seconds * 0.9)
            s.overhead.observe(seconds * 0.1)
            s.ttft.observe(seconds / 2)
            s.itl.observe(seconds / 10)
        s.duration.exemplar(0.003, "d" * 32, 1_700_000_000.125)
        s.duration.exemplar(400.0, "e" * 32, 1_700_000_001.5)
    route: RouteCounters = metrics.route("chat")
    route.retries, route.fallbacks = 3, 1
    route.errors_by_code["rate_limited"] = 4
    metrics.refused("model_not_found", 404, None)
    metrics.health_probes[("10.0.0.1:8000", "ok")] = 9
    metrics.info_labels = {"version": "1.0", "python": "3.11"}
    metrics.policy_hash, metrics.policy_routes = "abc", 1
    metrics.api_keys[("team-a", "accepted")] = 11
    metrics.kube_synced["endpointslices"] = True
    metrics.discovered["k8s://ns/svc"] = 2
    metrics.loop_tasks = lambda: 17
    return metrics


def test_the_gateways_metrics_render_as_prometheus_client_renders_them() -> None:
    metrics = _busy_gateway()
    families = list(metrics.registry().collect())
    assert all(isinstance(f, Metric) for f in families)
    theirs = Fixed(_as_prometheus_client(families))
    text = generate_text(families)
    assert text == prom_text(theirs)
    om = generate_openmetrics(families)
    assert om == prom_openmetrics(theirs)
    assert f'trace_id="{"e" * 32}"'.encode() in om and b"trace_id" not in text
    # And they parse: every histogram's buckets, counts and sums are consistent.
    assert {f.name for f in parse_openmetrics(om.decode())} >= {  # type: ignore[no-untyped-call]
        "switchyard_request_duration_seconds",
        "switchyard_requests",
        "switchyard_build",
    }
    assert any(f.name == "switchyard_requests" for f in parse_text(text.decode()))


def test_content_types_name_the_formats_written() -> None:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
    from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST

    assert CONTENT_TYPE_TEXT == CONTENT_TYPE_PLAIN_0_0_4
    assert CONTENT_TYPE_OPENMETRICS == CONTENT_TYPE_LATEST
