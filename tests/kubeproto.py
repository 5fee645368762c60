"""The Kubernetes API's wire conventions, as the fake API server (`kubefake.py`) needs
them: which resources it serves, Status bodies, selectors, merge patches, the RBAC
authorizer, and builders of the objects tests put into it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

Obj = dict[str, Any]
TOKEN = "switchyard-test-token"
# (group, plural) of every resource served; all of them namespaced.
RESOURCES = {
    ("", "configmaps"): ("v1", "ConfigMap"),
    ("", "events"): ("v1", "Event"),
    ("discovery.k8s.io", "endpointslices"): ("v1", "EndpointSlice"),
    ("coordination.k8s.io", "leases"): ("v1", "Lease"),
}
RBAC_GROUP = "rbac.authorization.k8s.io"
# RBAC objects the fake stores (through its test API, not over HTTP) and authorizes
# with; the cluster-scoped ones are kept under namespace "".
RBAC = {
    (RBAC_GROUP, "roles"): ("v1", "Role"),
    (RBAC_GROUP, "rolebindings"): ("v1", "RoleBinding"),
    (RBAC_GROUP, "clusterroles"): ("v1", "ClusterRole"),
    (RBAC_GROUP, "clusterrolebindings"): ("v1", "ClusterRoleBinding"),
}
CLUSTER_SCOPED = {(RBAC_GROUP, "clusterroles"), (RBAC_GROUP, "clusterrolebindings")}
STORED = {**RESOURCES, **RBAC}


def resource_of(obj: Obj) -> tuple[str, str]:
    api_version, kind = obj["apiVersion"], obj["kind"]
    group = api_version.rpartition("/")[0]
    for (g, plural), (_, k) in STORED.items():
        if g == group and k == kind:
            return g, plural
    raise ValueError(f"the fake does not serve {api_version} {kind}")


def verb_of(request: web.Request, name: str | None) -> str:
    if request.method == "GET":
        if name is not None:
            return "get"
        return "watch" if request.query.get("watch") in ("1", "true") else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        request.method, "unknown"
    )


def service_account_user(namespace: str, name: str) -> str:
    """The user name the API server authenticates a ServiceAccount's token as."""
    return f"system:serviceaccount:{namespace}:{name}"


def groups_of(user: str) -> set[str]:
    """The groups the authenticator adds: every ServiceAccount is also in its namespace's
    group and in all ServiceAccounts'; every authenticated user in system:authenticated."""
    groups = {"system:authenticated"}
    prefix, _, rest = user.partition("system:serviceaccount:")
    if not prefix and rest.count(":") == 1:
        groups |= {"system:serviceaccounts", f"system:serviceaccounts:{rest.split(':')[0]}"}
    return groups


def authorized(
    rbac: Callable[[str, str], list[Obj]],
    user: str,
    verb: str,
    group: str,
    plural: str,
    namespace: str,
    name: str | None,
) -> bool:
    """The RBAC authorizer's decision, as kube-apiserver makes it (plugin/pkg/auth/
    authorizer/rbac, VisitRulesFor): a ClusterRoleBinding grants its ClusterRole's rules
    in every namespace; a RoleBinding grants its Role's, or a ClusterRole's, rules only
    in the RoleBinding's own namespace. `rbac(plural, namespace)` lists stored objects
    (namespace "" for cluster-scoped ones). Rules only add: nothing else allows."""
    groups = groups_of(user)

    def rules_of(kind: str, role: str, ns: str) -> list[Obj]:
        plural_of = {"Role": "roles", "ClusterRole": "clusterroles"}.get(kind)
        if plural_of is None:
            return []
        found = [o for o in rbac(plural_of, ns) if o["metadata"]["name"] == role]
        return list(found[0].get("rules") or ()) if found else []

    def binds(binding: Obj, ns: str) -> bool:
        for subject in binding.get("subjects") or ():
            kind = subject.get("kind")
            if kind == "User" and subject.get("name") == user:
                return True
            if kind == "Group" and subject.get("name") in groups:
                return True
            if kind == "ServiceAccount":
                # A RoleBinding's ServiceAccount subject defaults to the binding's namespace.
                sa_ns = subject.get("namespace") or ns
                if sa_ns and service_account_user(sa_ns, subject.get("name", "")) == user:
                    return True
        return False

    rules: list[Obj] = []
    for binding in rbac("clusterrolebindings", ""):
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole" and binds(binding, ""):
            rules += rules_of("ClusterRole", ref.get("name", ""), "")
    if namespace:
        for binding in rbac("rolebindings", namespace):
            ref = binding.get("roleRef") or {}
            if binds(binding, namespace):
                role_ns = namespace if ref.get("kind") == "Role" else ""
                rules += rules_of(ref.get("kind", ""), ref.get("name", ""), role_ns)
    return any(_rule_allows(rule, verb, group, plural, name) for rule in rules)


def _rule_allows(rule: Obj, verb: str, group: str, plural: str, name: str | None) -> bool:
    def has(values: Any, value: str) -> bool:
        return "*" in (values or ()) or value in (values or ())

    names = rule.get("resourceNames") or ()
    return (
        has(rule.get("verbs"), verb)
        and has(rule.get("apiGroups"), group)
        and has(rule.get("resources"), plural)
        and (not names or name in names)
    )


def forbidden_response(
    user: str, verb: str, group: str, plural: str, namespace: str, name: str | None
) -> web.Response:
    """403 with the API server's Status message (what `kubectl` and clients print)."""
    what = f"{plural}.{group}" if group else plural
    subject = f'{what} "{name}"' if name else what
    message = (
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{plural}" '
        f'in API group "{group}" in the namespace "{namespace}"'
    )
    return status_response(403, "Forbidden", message)


def selector_of(request: web.Request) -> Callable[[Obj], bool]:
    fields = pairs(request.query.get("fieldSelector", ""))
    labels = pairs(request.query.get("labelSelector", ""))
    for key in fields:
        if key not in ("metadata.name", "metadata.namespace"):
            raise web.HTTPBadRequest(text=f"field label not supported: {key}")

    def match(obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        if any(meta.get(k.split(".", 1)[1]) != v for k, v in fields.items()):
            return False
        have = meta.get("labels") or {}
        return all(have.get(k) == v for k, v in labels.items())

    return match


def pairs(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip().lstrip("=")
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: what `kubectl patch --type merge` sends."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


def status_body(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def status_response(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_body(code, reason, message), status=code)


def conflict_response(plural: str, name: str | None) -> web.Response:
    message = (
        f'Operation cannot be fulfilled on {plural} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    return status_response(409, "Conflict", message)


CONFIGMAPS = ("", "configmaps")
EVENTS = ("", "events")
ENDPOINTSLICES = ("discovery.k8s.io", "endpointslices")
LEASES = ("coordination.k8s.io", "leases")


def configmap(namespace: str, name: str, data: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def endpoint_slice(
    namespace: str,
    service: str,
    name: str,
    port: int,
    endpoints: list[tuple[str, bool | None, str]],
    port_name: str = "http",
) -> Obj:
    """An EndpointSlice of `service`: endpoints are (address, ready, pod name)."""
    listed = []
    for address, ready, pod in endpoints:
        conditions = {} if ready is None else {"ready": ready, "serving": ready}
        listed.append(
            {
                "addresses": [address],
                "conditions": conditions,
                "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace},
            }
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": listed,
    }
