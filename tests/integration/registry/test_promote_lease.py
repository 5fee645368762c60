"""`switchyard registry promote --lease`: the alias moves only under a Kubernetes Lease
(fake API server, real client), so two promoters never interleave."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gateway.quickstart.mlflow_server import LocalMlflow
from tests.integration.registry.conftest import Registered, serving_tags
from tests.integration.registry.test_registry_cli import switchyard
from tests.kubefake import LEASES, FakeKube


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    fake = FakeKube().start()
    yield fake
    fake.stop()


def held_by(holder: str, seconds: int = 60) -> dict[str, object]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "promote-chat", "namespace": "mlops"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": seconds,
            "acquireTime": now,
            "renewTime": now,
        },
    }


def test_promote_waits_for_the_lease_and_releases_it(
    kube: FakeKube,
    tmp_path: Path,
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    register: Callable[..., Registered],
) -> None:
    model = register(
        serving_tags("http://127.0.0.1:9101"),
        serving_tags("http://127.0.0.1:9102"),
        aliases={"champion": 1, "challenger": 2},
    )
    config = str(kube.kubeconfig(tmp_path / "kubeconfig"))
    lease = ("--lease", "mlops/promote-chat", "--kubeconfig", config)
    uri = ("--registry-uri", mlflow_server.uri)

    # Another writer holds the Lease: nothing moves, and the registry is not touched.
    kube.apply(held_by("rollout-controller-7f9c"))
    refused = switchyard(
        "registry", "promote", model.name, "challenger", *lease, "--lease-wait", "0", *uri
    )
    assert refused.returncode == 1
    assert "not moved: lease mlops/promote-chat is held by rollout-controller-7f9c" in (
        refused.stderr
    )
    assert mlflow_client.get_model_version_by_alias(model.name, "champion").version == "1"

    # Released: the promotion takes the Lease, moves the alias, and gives it back.
    lease_obj = kube.get(LEASES, "mlops", "promote-chat")
    assert lease_obj is not None
    lease_obj["spec"]["holderIdentity"] = None
    kube.apply(lease_obj)
    promoted = switchyard("registry", "promote", model.name, "challenger", *lease, *uri)
    assert promoted.returncode == 0, promoted.stderr
    assert mlflow_client.get_model_version_by_alias(model.name, "champion").version == "2"
    after = kube.get(LEASES, "mlops", "promote-chat")
    assert after is not None and not after["spec"].get("holderIdentity")
    assert after["spec"]["leaseTransitions"] == 1
    assert kube.served("PUT", "/leases/promote-chat")
