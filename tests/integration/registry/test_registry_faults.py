"""The registry failing never fails requests; bad tags fail only the route that needs them."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from mlflow import MlflowClient

from gateway.quickstart.mlflow_server import LocalMlflow
from tests.integration.registry.conftest import Registered, free_port, serving_tags
from tests.integration.registry.test_alias_follow import Load, alias_policy
from tests.integration.registry.test_registry_cli import switchyard
from tests.procs import GatewayProc, Simulator, canary_policy, start_gateway

POLL = "0.3"


def chat(gw: GatewayProc, route: str) -> httpx.Response:
    body = {"model": route, "messages": [{"role": "user", "content": "x"}]}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=10)


def wait_until(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def test_registry_down_at_start_then_up_then_killed_then_restart_from_cache(
    sims: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    a, b = sims
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "reg.yaml").write_text(alias_policy("reg", "svc"))
    (policies / "static.yaml").write_text(canary_policy("static", a.url, b.url))
    cache = tmp_path / "cache.json"
    args = ("--registry-uri", uri, "--registry-poll-interval", POLL, "--registry-cache", str(cache))

    # 1. No registry and no cache: only the registry route answers 503, and says why.
    gw = start_gateway(policies, *args)
    server: LocalMlflow | None = None
    try:
        down = chat(gw, "reg")
        assert down.status_code == 503
        error = down.json()["error"]
        assert error["code"] == "unavailable"
        assert "models:/svc@champion" in error["message"]
        assert "unreachable" in error["message"]
        assert chat(gw, "static").status_code == 200
        assert gw.metric("switchyard_registry_stale", model="svc", alias="champion") == 1
        assert gw.metric("switchyard_gateway_errors_total", route="reg", code="unavailable") == 1

        # 2. The registry comes up: the same gateway starts serving the route.
        server = LocalMlflow(tmp_path / "mlflow", port=port)
        server.start()
        server.wait_ready(timeout=120)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model("svc")
        version = client.create_model_version(
            "svc", source="s3://bucket/svc/1", tags=serving_tags(a.url)
        )
        client.set_registered_model_alias("svc", "champion", str(version.version))
        wait_until(lambda: chat(gw, "reg").status_code == 200)
        assert chat(gw, "reg").headers["x-switchyard-version"] == "1"
        assert gw.metric("switchyard_registry_stale", model="svc", alias="champion") == 0

        # 3. The registry dies mid-run: every request still succeeds, staleness shows.
        with Load(gw.url, "reg", threads=3, limit=1500) as load:
            load.wait_for(100)
            server.stop(signal.SIGKILL)
            load.wait_for(len(load.records) + 300)
        statuses = Counter(status for _, status, _ in load.records)
        print(f"\nregistry killed mid-run: {dict(statuses)}")
        assert set(statuses) == {200}, statuses
        wait_until(
            lambda: gw.metric("switchyard_registry_stale", model="svc", alias="champion") == 1
        )
        assert gw.metric("switchyard_registry_lookups_total", outcome="error") > 0
        assert gw.metric("switchyard_registry_alias_version", model="svc", alias="champion") == 1
        assert (
            gw.metric("switchyard_registry_resolution_age_seconds", model="svc", alias="champion")
            > 0
        )

        # 4. A restart while the registry is still down serves from the cache.
        gw.proc.stop()
        gw = start_gateway(policies, *args)
        again = chat(gw, "reg")
        assert again.status_code == 200
        assert again.headers["x-switchyard-version"] == "1"
        assert f"registry cache {cache}: 1 lookup(s) loaded" in gw.proc.output()
        assert gw.metric("switchyard_registry_stale", model="svc", alias="champion") == 1
    finally:
        gw.proc.stop()
        if server is not None:
            server.stop()


def test_bad_tags_are_a_problem_for_their_route_only(
    sims: tuple[Simulator, Simulator],
    gateway: Callable[..., GatewayProc],
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    register: Callable[..., Registered],
) -> None:
    a, _ = sims
    good = register(serving_tags(a.url), aliases={"champion": 1})
    no_endpoint = register({"switchyard.protocol": "openai"}, aliases={"champion": 1})
    unknown = register(serving_tags(a.url, protocol="grpc-magic"), aliases={"champion": 1})
    mismatch = register(serving_tags(a.url, protocol="ollama"), aliases={"champion": 1})
    gw = gateway(
        alias_policy("good", good.name),
        alias_policy("no-endpoint", no_endpoint.name),
        alias_policy("unknown", unknown.name),
        alias_policy("mismatch", mismatch.name),
        extra=("--registry-uri", mlflow_server.uri, "--registry-poll-interval", POLL),
    )
    assert chat(gw, "good").status_code == 200
    expected = {
        "no-endpoint": "names no serving endpoint: set its tag switchyard.endpoint",
        "unknown": "tag switchyard.protocol='grpc-magic' is not a known protocol",
        "mismatch": "serves ollama (switchyard.protocol) but route 'mismatch' speaks openai",
    }
    for route, message in expected.items():
        r = chat(gw, route)
        assert r.status_code == 503, route
        assert message in r.json()["error"]["message"], r.json()
        assert gw.metric("switchyard_registry_problems", route=route) == 1
    assert gw.metric("switchyard_registry_problems", route="good") == 0
    routes = {r["route"]: r for r in httpx.get(f"{gw.admin}/admin/routes").json()["routes"]}
    assert routes["good"]["unavailable"] is None
    assert expected["unknown"] in routes["unknown"]["unavailable"]
    assert expected["unknown"] in routes["unknown"]["variants"][0]["registry"]["problem"]

    # The serving alias moves to a version with bad tags: the last good keeps serving.
    bad = mlflow_client.create_model_version(good.name, source="s3://bucket/bad", tags={})
    mlflow_client.set_registered_model_alias(good.name, "champion", str(bad.version))
    wait_until(
        lambda: gw.metric("switchyard_registry_stale", model=good.name, alias="champion") == 1
    )
    served = chat(gw, "good")
    assert served.status_code == 200 and served.headers["x-switchyard-version"] == "1"
    assert gw.metric("switchyard_registry_alias_version", model=good.name, alias="champion") == 2
    variant = next(
        r for r in httpx.get(f"{gw.admin}/admin/routes").json()["routes"] if r["route"] == "good"
    )["variants"][0]
    assert variant["registry"]["version"] == "1"
    assert variant["registry"]["registry_version"] == "2"
    assert "switchyard.endpoint" in variant["registry"]["problem"]


def test_policy_validate_resolves_against_the_registry(
    mlflow_server: LocalMlflow,
    register: Callable[..., Registered],
    tmp_path: Path,
) -> None:
    good = register(serving_tags("http://127.0.0.1:9101"), aliases={"champion": 1})
    bad = register({"switchyard.protocol": "openai"}, aliases={"champion": 1})
    (tmp_path / "p.yaml").write_text(
        alias_policy("good", good.name) + "---\n" + alias_policy("bad", bad.name)
    )
    ok = switchyard("policy", "validate", str(tmp_path))
    assert ok.returncode == 0
    assert "2 registry target(s) not resolved (no --registry-uri)" in ok.stdout
    live = switchyard("policy", "validate", str(tmp_path), "--registry-uri", mlflow_server.uri)
    assert live.returncode == 1
    assert f"{tmp_path}/p.yaml:8: variants[champion].target: {bad.name} version 1 names no" in (
        live.stdout
    )
    explained = switchyard(
        "policy", "explain", "--route", "good", "--policies", str(tmp_path / "p.yaml")
    )
    assert "not resolved (no --registry-uri given)" in explained.stdout
