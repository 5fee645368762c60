"""The Kubernetes API's wire conventions, as the fake API server (`kubefake.py`) needs
them: which resources it serves, Status bodies, selectors, merge patches, and builders
of the objects tests put into it."""

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


def resource_of(obj: Obj) -> tuple[str, str]:
    api_version, kind = obj["apiVersion"], obj["kind"]
    group = api_version.rpartition("/")[0]
    for (g, plural), (_, k) in RESOURCES.items():
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
