"""Compiling policies into the runtime snapshot the data plane reads."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.controlplane.policy.compile import compile_snapshot, load_checked, policy_version
from gateway.controlplane.policy.loader import LoadedPolicy, PolicyError, parse_policies
from gateway.controlplane.policy.schema import RoutingPolicy
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import OutlierPolicy, RetryPolicy, Timeouts
from gateway.observability.metrics import GatewayMetrics

CHAT = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: champion
    weight: 90
    endpoints: [http://127.0.0.1:9101, "http://backend.local/v1/"]
    model: llama3-8b
  - name: challenger
    weight: 10
    target: models:/chat/7
    endpoints: ["http://[::1]:9102/prefix"]
  - name: dark
    weight: 0
    endpoints: [http://127.0.0.1:9103]
sticky: {hash_on: "header:X-User-Id"}
overrides:
  - match: {header: {X-Cohort: Beta, x-team: ml}}
    variant: dark
fallback: [champion, challenger]
timeouts: {connect: 250ms, first_byte: 10s, total: 2m, idle: 30}
retries: {attempts: 3, budget: 0.5, min_per_second: 1, on: [timeout, 503, 429]}
outlier: {consecutive_failures: 2, base_ejection: 1s, max_ejection: 1m, max_ejection_percent: 25}
max_body_bytes: 4096
"""
EMBED = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: embed
variants: [{name: only, endpoints: ['http://127.0.0.1:9101']}]
"""
TRITON = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud
protocol: kserve-v2
variants: [{name: only, endpoints: ['http://127.0.0.1:8000']}]
"""


def policies(*texts: str) -> list[LoadedPolicy]:
    out: list[LoadedPolicy] = []
    for i, text in enumerate(texts):
        found, problems = parse_policies(text, f"p{i}.yaml")
        assert problems == []
        out.extend(found)
    return out


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture
def health(metrics: GatewayMetrics) -> HealthRegistry:
    return HealthRegistry(metrics)


def test_route_fields(metrics: GatewayMetrics, health: HealthRegistry) -> None:
    snapshot = compile_snapshot(policies(CHAT), metrics=metrics, health=health, created_at=5.0)
    route = snapshot.routes["chat"]
    assert (route.name, route.protocol, route.salt) == ("chat", "openai", b"chat")
    assert [v.name for v in route.variants] == ["champion", "challenger", "dark"]
    assert [v.index for v in route.variants] == [0, 1, 2]
    assert route.cumulative == (90.0, 100.0, 100.0)
    assert route.total_weight == 100.0
    assert route.sticky is not None
    assert (route.sticky.source, route.sticky.key, route.sticky.key_bytes) == (
        "header",
        "x-user-id",
        b"x-user-id",
    )
    [override] = route.overrides
    assert override.headers == ((b"x-cohort", b"Beta"), (b"x-team", b"ml"))
    assert override.variant == 2
    assert route.fallback == (0, 1)
    assert route.timeouts == Timeouts(connect=0.25, first_byte=10.0, total=120.0, idle=30.0)
    assert route.retries == RetryPolicy(
        attempts=3,
        budget=0.5,
        min_per_second=1.0,
        on_connect_error=False,
        on_timeout=True,
        on_reset=False,
        statuses=frozenset({503, 429}),
    )
    assert route.outlier == OutlierPolicy(2, 1.0, 60.0, 25.0)
    assert route.max_body_bytes == 4096
    assert route.budget is health.budget("chat")
    assert route.counters is metrics.route("chat")
    assert route.source == "p0.yaml:1"


def test_endpoint_and_variant_fields(metrics: GatewayMetrics, health: HealthRegistry) -> None:
    route = compile_snapshot(policies(CHAT), metrics=metrics, health=health).routes["chat"]
    champion, challenger, _ = route.variants
    local, named = champion.endpoints
    assert (local.url, local.host, local.port, local.base_path) == (
        "http://127.0.0.1:9101",
        "127.0.0.1",
        9101,
        "",
    )
    assert (local.backend, local.host_header) == ("127.0.0.1:9101", b"127.0.0.1:9101")
    assert local.state is health.endpoint("127.0.0.1:9101")
    # Default port, trailing slash of the base path dropped.
    assert (named.url, named.port, named.base_path, named.backend) == (
        "http://backend.local:80/v1",
        80,
        "/v1",
        "backend.local:80",
    )
    [v6] = challenger.endpoints
    assert (v6.host, v6.port, v6.base_path, v6.backend, v6.host_header) == (
        "::1",
        9102,
        "/prefix",
        "[::1]:9102",
        b"[::1]:9102",
    )
    assert (champion.version, champion.upstream_model, champion.target) == ("", "llama3-8b", None)
    # A pinned registry version labels the pool without needing a registry.
    assert (challenger.version, challenger.target) == ("7", "models:/chat/7")
    assert champion.series == (
        metrics.series("chat", "champion", "", "127.0.0.1:9101"),
        metrics.series("chat", "champion", "", "backend.local:80"),
    )
    assert challenger.series == (metrics.series("chat", "challenger", "7", "[::1]:9102"),)
    assert champion.header_lines == (
        b"x-switchyard-route: chat\r\nx-switchyard-variant: champion\r\n"
        b"x-switchyard-backend: 127.0.0.1:9101\r\n",
        b"x-switchyard-route: chat\r\nx-switchyard-variant: champion\r\n"
        b"x-switchyard-backend: backend.local:80\r\n",
    )
    assert challenger.header_lines == (
        b"x-switchyard-route: chat\r\nx-switchyard-variant: challenger\r\n"
        b"x-switchyard-backend: [::1]:9102\r\nx-switchyard-version: 7\r\n",
    )


def test_defaults_are_the_runtime_dataclass_defaults(
    metrics: GatewayMetrics, health: HealthRegistry
) -> None:
    route = compile_snapshot(policies(EMBED), metrics=metrics, health=health).routes["embed"]
    assert route.timeouts == Timeouts()
    assert route.retries == RetryPolicy()
    assert route.outlier == OutlierPolicy()
    assert (route.sticky, route.overrides, route.fallback, route.max_body_bytes) == (
        None,
        (),
        (),
        None,
    )
    assert route.protocol == "openai"
    assert route.variants[0].weight == 1.0


def test_health_and_series_carry_over_between_snapshots(
    metrics: GatewayMetrics, health: HealthRegistry
) -> None:
    first = compile_snapshot(policies(CHAT), metrics=metrics, health=health)
    second = compile_snapshot(
        policies(CHAT.replace("weight: 10", "weight: 20")), metrics=metrics, health=health
    )
    a, b = first.routes["chat"], second.routes["chat"]
    assert a.variants[0].endpoints[0].state is b.variants[0].endpoints[0].state
    assert a.variants[0].series[0] is b.variants[0].series[0]
    assert a.budget is b.budget and a.counters is b.counters
    assert first.version != second.version


def test_models_body_lists_openai_routes_sorted(
    metrics: GatewayMetrics, health: HealthRegistry
) -> None:
    snapshot = compile_snapshot(
        policies(EMBED, TRITON, CHAT), metrics=metrics, health=health, created_at=1700000000.9
    )
    assert orjson.loads(snapshot.models_body) == {
        "object": "list",
        "data": [
            {"id": "chat", "object": "model", "created": 1700000000, "owned_by": "switchyard"},
            {"id": "embed", "object": "model", "created": 1700000000, "owned_by": "switchyard"},
        ],
    }
    assert sorted(snapshot.routes) == ["chat", "embed", "fraud"]
    assert snapshot.created_at == 1700000000.9
    assert snapshot.sources == ("p0.yaml", "p1.yaml", "p2.yaml")


def test_version_is_a_content_hash_independent_of_layout(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "all.yaml").write_text(CHAT + "---\n" + EMBED)
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.yaml").write_text(EMBED)
    # Same durations spelled differently, defaults written out.
    (two / "b.yaml").write_text(
        CHAT.replace("connect: 250ms", "connect: 0.25")
        .replace("total: 2m", "total: 120s")
        .replace("protocol: openai\n", "")
        + "protocol: openai\n"
    )
    version = policy_version(load_checked(one))
    assert version == policy_version(load_checked(two))
    assert len(version) == 12 and int(version, 16) >= 0
    changed = policy_version(policies(CHAT.replace("weight: 90", "weight: 91"), EMBED))
    assert changed != version


def test_bare_routing_policy_objects_compile(
    metrics: GatewayMetrics, health: HealthRegistry
) -> None:
    policy = RoutingPolicy.model_validate(
        {
            "apiVersion": "switchyard/v1",
            "kind": "RoutingPolicy",
            "route": "embed",
            "variants": [{"name": "only", "endpoints": ["http://127.0.0.1:9101"]}],
        }
    )
    snapshot = compile_snapshot([policy], metrics=metrics, health=health)
    assert snapshot.routes["embed"].source == "<memory>"
    assert snapshot.version == policy_version(policies(EMBED))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("weight: 90", "weight: 0", "weight: 10\n", "weight: 0\n"),
            "p0.yaml:4:1: variants: weights add up to 0; at least one must be above 0",
        ),
        (
            ("name: dark", "name: champion"),
            "p0.yaml:13:5: variants[2].name: duplicate variant name (also variants[0])\n"
            "p0.yaml:19:5: overrides[0].variant: no variant named 'dark' "
            "(variants: champion, challenger)",
        ),
        (
            ("fallback: [champion, challenger]", "fallback: [champion, blue, champion]"),
            "p0.yaml:20:22: fallback[1]: no variant named 'blue' "
            "(variants: champion, challenger, dark)\n"
            "p0.yaml:20:28: fallback[2]: variant 'champion' is listed twice",
        ),
        (
            ("max_ejection: 1m", "max_ejection: 500ms"),
            "p0.yaml:23:55: outlier.max_ejection: must be at least base_ejection",
        ),
        (
            ('    endpoints: ["http://[::1]:9102/prefix"]\n', ""),
            "p0.yaml:11:5: variants[1].target: registry targets need a registry "
            "(--registry-uri); not configured",
        ),
    ],
)
def test_compile_time_problems(
    edit: tuple[str, ...], expected: str, metrics: GatewayMetrics, health: HealthRegistry
) -> None:
    text = CHAT
    for old, new in zip(edit[::2], edit[1::2], strict=True):
        assert old in text
        text = text.replace(old, new)
    with pytest.raises(PolicyError) as info:
        compile_snapshot(policies(text), metrics=metrics, health=health)
    assert "\n".join(str(p) for p in info.value.problems) == expected


def test_duplicate_routes_are_a_compile_problem(
    metrics: GatewayMetrics, health: HealthRegistry
) -> None:
    with pytest.raises(PolicyError) as info:
        compile_snapshot(policies(EMBED, EMBED), metrics=metrics, health=health)
    assert [str(p) for p in info.value.problems] == [
        "p1.yaml:3:1: route: route 'embed' is already defined at p0.yaml:1"
    ]
