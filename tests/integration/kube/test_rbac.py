"""The fake API server authorizes as kube-apiserver's RBAC does, namespaces included:
if it allowed more than a real cluster, the gateway tests and the deploy/ manifests
they apply would pass where a real cluster answers 403."""

from __future__ import annotations

import httpx
import pytest

from tests.kubefake import FakeKube, configmap, endpoint_slice, service_account_user

GATEWAY = service_account_user("switchyard", "switchyard")
READ_SLICES = {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"]}


def role(kind: str, name: str, namespace: str | None, **rule: object) -> dict[str, object]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    rules = [{**READ_SLICES, "verbs": ["get", "list", "watch"], **rule}]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "rules": rules,
    }


def binding(
    kind: str, namespace: str | None, role_kind: str, role_name: str, subject: dict[str, str]
) -> dict[str, object]:
    meta = {"name": f"bind-{role_name}", **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": [subject],
    }


def sa(name: str = "switchyard", namespace: str | None = "switchyard") -> dict[str, str]:
    return {
        "kind": "ServiceAccount",
        "name": name,
        **({"namespace": namespace} if namespace else {}),
    }


@pytest.fixture
def rbac(kube: FakeKube) -> FakeKube:
    kube.rbac, kube.user = True, GATEWAY
    for ns in ("switchyard", "models", "other"):
        kube.apply(endpoint_slice(ns, "vllm", "vllm-a", 8000, [("10.0.0.1", True, "vllm-0")]))
    return kube


def status(kube: FakeKube, namespace: str, query: str = "") -> int:
    url = f"{kube.url}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices{query}"
    headers = {"Authorization": f"Bearer {kube.token}"}
    return httpx.get(url, headers=headers, timeout=5).status_code


def statuses(kube: FakeKube) -> dict[str, int]:
    return {ns: status(kube, ns) for ns in ("switchyard", "models", "other")}


def test_a_role_grants_only_in_its_own_namespace(rbac: FakeKube) -> None:
    rbac.apply(role("Role", "read", "switchyard"))
    rbac.apply(binding("RoleBinding", "switchyard", "Role", "read", sa()))
    assert statuses(rbac) == {"switchyard": 200, "models": 403, "other": 403}
    forbidden = httpx.get(
        f"{rbac.url}/apis/discovery.k8s.io/v1/namespaces/models/endpointslices",
        headers={"Authorization": f"Bearer {rbac.token}"},
        timeout=5,
    ).json()
    assert (forbidden["code"], forbidden["reason"]) == (403, "Forbidden")
    assert forbidden["message"] == (
        f'endpointslices.discovery.k8s.io is forbidden: User "{GATEWAY}" cannot list '
        'resource "endpointslices" in API group "discovery.k8s.io" in the namespace "models"'
    )
    # A RoleBinding in `models` naming the Role of `switchyard` finds no such Role there.
    rbac.apply(binding("RoleBinding", "models", "Role", "read", sa()))
    assert statuses(rbac) == {"switchyard": 200, "models": 403, "other": 403}


def test_a_cluster_role_grants_where_its_binding_reaches(rbac: FakeKube) -> None:
    rbac.apply(role("ClusterRole", "slices", None))
    assert statuses(rbac) == {"switchyard": 403, "models": 403, "other": 403}
    rbac.apply(binding("RoleBinding", "models", "ClusterRole", "slices", sa()))
    assert statuses(rbac) == {"switchyard": 403, "models": 200, "other": 403}
    rbac.apply(binding("ClusterRoleBinding", None, "ClusterRole", "slices", sa()))
    assert statuses(rbac) == {"switchyard": 200, "models": 200, "other": 200}


def test_subjects_match_the_authenticated_user_and_its_groups(rbac: FakeKube) -> None:
    rbac.apply(role("Role", "read", "models"))
    # Each binding below replaces the last (same name): one subject at a time.
    # Another ServiceAccount, or ours named in another namespace: nothing.
    rbac.apply(binding("RoleBinding", "models", "Role", "read", sa("other")))
    assert status(rbac, "models") == 403
    rbac.apply(binding("RoleBinding", "models", "Role", "read", sa(namespace="models")))
    assert status(rbac, "models") == 403
    # Without a namespace, a RoleBinding's ServiceAccount subject is in the binding's.
    rbac.apply(role("Role", "read", "switchyard"))
    rbac.apply(binding("RoleBinding", "switchyard", "Role", "read", sa(namespace=None)))
    assert status(rbac, "switchyard") == 200
    # The ServiceAccounts' groups.
    group = {"kind": "Group", "name": "system:serviceaccounts:switchyard"}
    rbac.apply(binding("RoleBinding", "models", "Role", "read", group))
    assert status(rbac, "models") == 200


def test_verbs_resources_and_resource_names_are_checked(rbac: FakeKube) -> None:
    rbac.apply(configmap("switchyard", "switchyard-policies", {}))
    rbac.apply(role("Role", "read", "switchyard", verbs=["get"]))
    rbac.apply(binding("RoleBinding", "switchyard", "Role", "read", sa()))
    slices = "/apis/discovery.k8s.io/v1/namespaces/switchyard/endpointslices"
    headers = {"Authorization": f"Bearer {rbac.token}"}
    assert httpx.get(f"{rbac.url}{slices}/vllm-a", headers=headers).status_code == 200
    assert status(rbac, "switchyard") == 403  # list is not get
    config = "/api/v1/namespaces/switchyard/configmaps/switchyard-policies"
    assert httpx.get(f"{rbac.url}{config}", headers=headers).status_code == 403
    # resourceNames: a list narrowed to that name by fieldSelector is allowed, others not.
    rbac.apply(role("Role", "read", "switchyard", verbs=["list"], resourceNames=["vllm-a"]))
    assert status(rbac, "switchyard", "?fieldSelector=metadata.name%3Dvllm-a") == 200
    assert status(rbac, "switchyard", "?fieldSelector=metadata.name%3Dvllm-b") == 403
    assert status(rbac, "switchyard") == 403
