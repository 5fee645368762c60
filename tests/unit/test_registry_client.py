"""The MLflow REST client against MLflow's wire format (faked at the network edge)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from gateway.controlplane.registry.client import (
    MlflowRegistry,
    RegistryConfig,
    RegistryError,
    RegistryNotFound,
)

VERSION = {
    "name": "chat",
    "version": "3",
    "creation_timestamp": 1795670667173,
    "current_stage": "None",
    "description": "",
    "source": "s3://bucket/chat/3",
    "run_id": "",
    "status": "READY",
    "tags": [{"key": "switchyard.endpoint", "value": "http://10.0.0.1:8000"}],
    "run_link": "",
    "aliases": ["champion"],
}


def client(handler: httpx.MockTransport, **config: str) -> MlflowRegistry:
    return MlflowRegistry(RegistryConfig("http://mlflow:5000/prefix", **config), transport=handler)


async def test_get_alias_parses_the_version_and_its_tags() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"model_version": VERSION})

    async with client(httpx.MockTransport(handler), token="t0k") as registry:
        found = await registry.get_alias("chat", "champion")
    assert (found.name, found.version, found.source) == ("chat", "3", "s3://bucket/chat/3")
    assert found.tags == {"switchyard.endpoint": "http://10.0.0.1:8000"}
    assert found.aliases == ("champion",)
    [request] = seen
    assert request.url.path == "/prefix/api/2.0/mlflow/registered-models/alias"
    assert dict(request.url.params) == {"name": "chat", "alias": "champion"}
    assert request.headers["authorization"] == "Bearer t0k"


async def test_basic_auth_and_json_writes() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    transport = httpx.MockTransport(handler)
    async with client(transport, username="ml", password="pw") as registry:
        await registry.set_alias("chat", "champion", "4")
        await registry.set_model_tag("chat", "switchyard.previous.champion", "3")
    assert [r.url.path.rsplit("mlflow", 1)[1] for r in seen] == [
        "/registered-models/alias",
        "/registered-models/set-tag",
    ]
    assert json.loads(seen[0].content) == {"name": "chat", "alias": "champion", "version": "4"}
    assert seen[0].headers["content-type"] == "application/json"
    expected = "Basic " + base64.b64encode(b"ml:pw").decode()
    assert seen[0].headers["authorization"] == expected


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Registered Model not found"}),
        # MLflow's answer for a missing alias on an existing model.
        (
            400,
            {
                "error_code": "INVALID_PARAMETER_VALUE",
                "message": "Registered model alias champion not found.",
            },
        ),
    ],
)
async def test_missing_things_are_not_found(status: int, body: dict[str, str]) -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(status, json=body))
    async with client(transport) as registry:
        with pytest.raises(RegistryNotFound, match="not found"):
            await registry.get_alias("chat", "champion")


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(500, text="boom"), "answered 500: boom"),
        (httpx.Response(401, json={"error_code": "UNAUTHENTICATED"}), "refused the credentials"),
        (
            httpx.Response(403, text="Invalid Host header - possible DNS rebinding attack"),
            "--allowed-hosts",
        ),
        (httpx.Response(200, text="<html>"), "answered 200"),
    ],
)
async def test_server_failures_are_registry_errors(response: httpx.Response, message: str) -> None:
    async with client(httpx.MockTransport(lambda _: response)) as registry:
        with pytest.raises(RegistryError, match=message) as info:
            await registry.get_model("chat")
    assert not isinstance(info.value, RegistryNotFound)


async def test_network_failures_are_registry_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with client(httpx.MockTransport(refuse)) as registry:
        with pytest.raises(RegistryError, match="unreachable: connection refused"):
            await registry.get_alias("chat", "champion")
    async with client(httpx.MockTransport(slow)) as registry:
        with pytest.raises(RegistryError, match="did not answer within 2s"):
            await registry.get_alias("chat", "champion")


async def test_list_versions_follows_pages_newest_first() -> None:
    pages = {
        None: {"model_versions": [{**VERSION, "version": "1"}], "next_page_token": "p2"},
        "p2": {"model_versions": [{**VERSION, "version": "10"}, {**VERSION, "version": "2"}]},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["filter"] == "name='chat'"
        return httpx.Response(200, json=pages[request.url.params.get("page_token")])

    async with client(httpx.MockTransport(handler)) as registry:
        versions = await registry.list_versions("chat")
    assert [v.version for v in versions] == ["10", "2", "1"]
