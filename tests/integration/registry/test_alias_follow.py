"""Moving an alias in a real MLflow registry moves live traffic, with no failed request."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from gateway.quickstart.mlflow_server import LocalMlflow
from tests.integration.registry.conftest import Registered, serving_tags
from tests.procs import GatewayProc, Simulator, running, start_gateway

POLL = 0.5


def alias_policy(route: str, model: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - name: champion
    target: models:/{model}@champion
"""


class Load:
    """Threads posting chat completions (bounded), recording (start, status, version)."""

    def __init__(self, url: str, route: str, threads: int = 4, limit: int = 5000) -> None:
        self.url, self.route, self.limit = url, route, limit
        self.records: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        body = {"model": self.route, "messages": [{"role": "user", "content": "x"}]}
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set() and len(self.records) < self.limit:
                start = time.monotonic()
                r = client.post(f"{self.url}/v1/chat/completions", json=body)
                with self._lock:
                    self.records.append(
                        (start, r.status_code, r.headers.get("x-switchyard-version", ""))
                    )

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def first(self, version: str, after: float, timeout: float = 15) -> float:
        """Start time of the first request after `after` that the new version answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                hits = [s for s, _, v in self.records if v == version and s >= after]
            if hits:
                return min(hits)
            time.sleep(0.01)
        raise AssertionError(f"version {version} never served within {timeout}s")


def move_and_measure(load: Load, move: Callable[[], None], version: str) -> tuple[float, float]:
    """Move the alias under load; returns (switch-over seconds, moved-at time)."""
    load.wait_for(len(load.records) + 50)
    moved = time.monotonic()
    move()
    switched = load.first(version, moved) - moved
    time.sleep(POLL + 0.3)
    return switched, moved


def test_alias_move_under_load_switches_within_the_poll_interval(
    sims: tuple[Simulator, Simulator],
    gateway: Callable[..., GatewayProc],
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    register: Callable[..., Registered],
) -> None:
    a, b = sims
    model = register(serving_tags(a.url), serving_tags(b.url), aliases={"champion": 1})
    gw = gateway(
        alias_policy("follow", model.name),
        extra=("--registry-uri", mlflow_server.uri, "--registry-poll-interval", str(POLL)),
    )
    v1, v2 = model.versions
    with Load(gw.url, "follow") as load:
        forward, moved = move_and_measure(
            load, lambda: mlflow_client.set_registered_model_alias(model.name, "champion", v2), v2
        )
        # Every request that started once the new version answered went to it.
        late = [v for s, _, v in load.records if s >= moved + forward + 0.05]
        back, _ = move_and_measure(
            load, lambda: mlflow_client.set_registered_model_alias(model.name, "champion", v1), v1
        )
    statuses = Counter(status for _, status, _ in load.records)
    versions = Counter(v for _, _, v in load.records)
    print(
        f"\nalias move under load: {len(load.records)} requests, statuses {dict(statuses)}, "
        f"versions {dict(versions)}; switch-over {forward:.3f}s (v{v1}->v{v2}) and "
        f"{back:.3f}s (v{v2}->v{v1}) with a {POLL}s poll interval"
    )
    assert set(statuses) == {200}, statuses
    assert late and set(late) == {v2}
    assert forward <= POLL + 0.5 and back <= POLL + 0.5
    assert gw.metric("switchyard_requests_total", route="follow", version=v2) > 0
    assert gw.metric("switchyard_registry_alias_version", model=model.name, alias="champion") == 1
    assert gw.metric("switchyard_registry_stale", model=model.name, alias="champion") == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_webhook_moves_traffic_before_the_next_poll(
    workers: int,
    sims: tuple[Simulator, Simulator],
    tmp_path: Path,
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    register: Callable[..., Registered],
) -> None:
    a, b = sims
    model = register(serving_tags(a.url), serving_tags(b.url), aliases={"champion": 1})
    (tmp_path / "p.yaml").write_text(alias_policy("hooked", model.name))
    gw = start_gateway(
        tmp_path,
        "--registry-uri",
        mlflow_server.uri,
        "--registry-poll-interval",
        "60",  # far longer than the test: only the webhook can explain a quick switch
        "--workers",
        str(workers),  # with 2, the supervisor must pass the delivery to every worker
        env={"SWITCHYARD_REGISTRY_WEBHOOK_SECRET": "s3cret"},
    )
    with running(gw.proc):
        hook = mlflow_client.create_webhook(
            name=f"switchyard-{model.name}",
            url=f"{gw.admin}/admin/registry/webhook",
            events=["model_version_alias.created", "model_version_alias.deleted"],
            secret="s3cret",
        )
        try:
            with Load(gw.url, "hooked", threads=4) as load:
                v2 = model.versions[1]
                switched, _ = move_and_measure(
                    load,
                    lambda: mlflow_client.set_registered_model_alias(model.name, "champion", v2),
                    v2,
                )
        finally:
            mlflow_client.delete_webhook(hook.webhook_id)
        print(f"\nwebhook switch-over: {switched:.3f}s (poll interval 60s)")
        assert switched < 5
        assert {status for _, status, _ in load.records} == {200}
        # A forged delivery is refused.
        forged = httpx.post(
            f"{gw.admin}/admin/registry/webhook",
            json={"entity": "model_version_alias", "action": "created", "data": {}},
            headers={
                "x-mlflow-signature": "v1,AAAA",
                "x-mlflow-timestamp": str(int(time.time())),
                "x-mlflow-delivery-id": "x",
            },
        )
        assert forged.status_code == 401
