"""Reaching the Kubernetes API: configuration precedence, references, backoff."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.controlplane.k8s.client import (
    Backoff,
    KubeAccess,
    KubeUnavailable,
    config_source,
    split_ref,
)


def test_split_ref() -> None:
    assert split_ref("prod/policies", "x") == ("prod", "policies")
    for bad in ("policies", "/policies", "prod/", "a/b/c"):
        with pytest.raises(ValueError, match="expected NAMESPACE/NAME"):
            split_ref(bad, "--policy-configmap")


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(base=0.1, cap=1.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    ceilings = [min(1.0, 0.1 * 2**i) for i in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next() <= 0.1


def test_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(KubeUnavailable, match="not running in a cluster and no kubeconfig"):
        config_source(None)
    with pytest.raises(KubeUnavailable, match="no such file"):
        config_source(str(tmp_path / "missing"))
    given = tmp_path / "given"
    given.write_text("{}")
    assert config_source(str(given)) == ("file", str(given))
    default = tmp_path / "default"
    default.write_text("{}")
    monkeypatch.setenv("KUBECONFIG", str(default))
    assert config_source(None) == ("file", str(default))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert config_source(None) == ("in-cluster", None)
    assert config_source(str(given)) == ("file", str(given)), "an explicit file wins"


async def test_access_reports_why_there_is_no_client(tmp_path: Path) -> None:
    access = KubeAccess(str(tmp_path / "missing"))
    with pytest.raises(KubeUnavailable, match="no such file"):
        await access.client()
    bad = tmp_path / "bad"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(KubeUnavailable, match="cannot load Kubernetes configuration"):
        await KubeAccess(str(bad)).client()
    await access.aclose()
