"""`explain`: the reasoning behind a routing decision, consistent with `decide`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.explain import explain, render_text
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.errors import UnknownRoute
from gateway.observability.metrics import GatewayMetrics

CHAT = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: champion
    weight: 90
    endpoints: [http://127.0.0.1:9101, http://127.0.0.1:9111, http://127.0.0.1:9121]
  - name: challenger
    weight: 10
    endpoints: [http://127.0.0.1:9102]
sticky: {hash_on: header:x-user-id}
overrides:
  - match: {header: {x-cohort: beta}}
    variant: challenger
fallback: [champion]
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: embed
variants: [{name: only, endpoints: ['http://127.0.0.1:9101']}]
"""


@pytest.fixture
def snapshot() -> RuntimeSnapshot:
    policies, problems = parse_policies(CHAT, "chat.yaml")
    assert problems == []
    metrics = GatewayMetrics()
    return compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))


def test_override_is_explained_with_the_matching_headers(snapshot: RuntimeSnapshot) -> None:
    head = RequestHead("chat", ((b"x-user-id", b"alice"), (b"x-cohort", b"beta")))
    result = explain(snapshot, head, random.Random(0))
    assert (result["variant"], result["reason"]) == ("challenger", "override")
    assert result["override"] == {"index": 0, "headers": {"x-cohort": "beta"}}
    assert result["detail"] == "overrides[0] matched x-cohort=beta"
    assert result["order"] == ["challenger", "champion"]
    assert result["fallback"] == ["champion"]
    assert result["snapshot"] == snapshot.version
    assert result["source"] == "chat.yaml:1"


def test_sticky_key_point_and_band_agree_with_decide(snapshot: RuntimeSnapshot) -> None:
    for name in ("alice", "bob", "carol", "dave", "erin"):
        head = RequestHead("chat", ((b"x-user-id", name.encode()),))
        result = explain(snapshot, head, random.Random(0))
        assert result["variant"] == decide(snapshot, head, random.Random(0)).variant.name
        sticky = result["sticky"]
        assert (sticky["source"], sticky["key"], sticky["value"]) == ("header", "x-user-id", name)
        band = next(w["band"] for w in result["weights"] if w["variant"] == result["variant"])
        assert band[0] <= sticky["point"] < band[1]
        assert f"x-user-id={name!r} hashes to" in result["detail"]


def test_weighted_draw_is_reported_and_reproducible(snapshot: RuntimeSnapshot) -> None:
    head = RequestHead("chat")
    first = explain(snapshot, head, random.Random(7))
    assert first == explain(snapshot, head, random.Random(7))
    assert first["reason"] == "weighted"
    assert first["draw"] == pytest.approx(random.Random(7).random() * 100)
    assert first["detail"].startswith("no header:x-user-id in the request; random draw ")
    assert first["variant"] == decide(snapshot, head, random.Random(7)).variant.name


def test_weights_shares_and_bands(snapshot: RuntimeSnapshot) -> None:
    result = explain(snapshot, RequestHead("chat"), random.Random(0))
    assert result["weights"] == [
        {"variant": "champion", "weight": 90.0, "share": 0.9, "band": [0.0, 90.0]},
        {"variant": "challenger", "weight": 10.0, "share": 0.1, "band": [90.0, 100.0]},
    ]


def test_endpoints_listed_available_first_then_least_in_flight(
    snapshot: RuntimeSnapshot,
) -> None:
    first, second, third = snapshot.routes["chat"].variants[0].endpoints
    first.state.in_flight = 4
    second.state.ejected_until = 1_000.0  # ejected until t=1000 on the health clock
    third.state.in_flight = 1
    head = RequestHead("chat", ((b"x-user-id", b"alice"),))
    result = explain(snapshot, head, random.Random(0), now=500.0)
    assert result["variant"] == "champion"
    assert [(e["backend"], e["available"], e["in_flight"]) for e in result["endpoints"]] == [
        ("127.0.0.1:9121", True, 1),
        ("127.0.0.1:9101", True, 4),
        ("127.0.0.1:9111", False, 0),
    ]
    later = explain(snapshot, head, random.Random(0), now=2_000.0)
    assert later["endpoints"][0]["backend"] == "127.0.0.1:9111"


def test_single_variant_and_unknown_route(snapshot: RuntimeSnapshot) -> None:
    result = explain(snapshot, RequestHead("embed"), random.Random(0))
    assert (result["reason"], result["detail"]) == ("single", "the route has one variant")
    with pytest.raises(UnknownRoute):
        explain(snapshot, RequestHead("missing"), random.Random(0))


def test_result_is_json_and_renders_as_text(snapshot: RuntimeSnapshot) -> None:
    head = RequestHead("chat", ((b"x-cohort", b"beta"),))
    result = explain(snapshot, head, random.Random(0))
    assert orjson.loads(orjson.dumps(result)) == result
    text = render_text(result)
    assert "variant:   challenger\n" in text
    assert "reason:    override - overrides[0] matched x-cohort=beta\n" in text
    assert "endpoints: http://127.0.0.1:9102 (available, 0 in flight)\n" in text
    assert "order:     challenger -> champion\n" in text


def test_a_route_with_an_experiment_says_where_its_statistics_come_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "chat.yaml").write_text(CHAT.replace("fallback: [champion]", "experiment: {}"))
    args = ["policy", "explain", "--policies", str(tmp_path), "--seed", "1"]
    monkeypatch.setenv("SWITCHYARD_STATS_SOURCE", "prometheus")
    monkeypatch.setenv("SWITCHYARD_PROMETHEUS_URL", "http://prom:9090")
    monkeypatch.setenv("SWITCHYARD_PROMETHEUS_SELECTOR", 'job="switchyard"')
    assert main([*args, "--route", "chat", "--json"]) == 0
    statistics = json.loads(capsys.readouterr().out)["statistics"]
    assert statistics == {
        "kind": "prometheus",
        "url": "http://prom:9090",
        "covers": 'every switchyard process Prometheus scrapes matching {job="switchyard"}, summed',
    }
    assert main([*args, "--route", "chat"]) == 0
    assert (
        "stats:     experiment and rollout counts from prometheus at http://prom:9090: "
        in capsys.readouterr().out
    )
    # No experiment or rollout block: nothing to say.
    assert main([*args, "--route", "embed", "--json"]) == 0
    assert "statistics" not in json.loads(capsys.readouterr().out)
    # The defaults: one process counts for itself; --workers N read their supervisor.
    for name in ("SWITCHYARD_STATS_SOURCE", "SWITCHYARD_PROMETHEUS_URL"):
        monkeypatch.delenv(name)
    monkeypatch.delenv("SWITCHYARD_PROMETHEUS_SELECTOR")
    assert main([*args, "--route", "chat", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["statistics"]["kind"] == "local"
    monkeypatch.setenv("SWITCHYARD_WORKERS", "4")
    assert main([*args, "--route", "chat", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["statistics"]["kind"] == "supervisor"
