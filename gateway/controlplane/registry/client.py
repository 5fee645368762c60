"""The MLflow model registry, spoken over its REST API with an async httpx client.

The control plane only needs a handful of calls (read an alias, a version, a model;
move an alias; set a tag), so this speaks `/api/2.0/mlflow/...` directly instead of
importing the `mlflow` package, which is large and not a runtime dependency of the
gateway. Every failure of the wire (connect, timeout, HTTP status, bad JSON) is turned
into `RegistryError` here and nowhere else; a missing model, version or alias is the
subclass `RegistryNotFound`, because the resolver treats "gone" and "unreachable"
alike (keep serving) but the CLI must tell them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.importing import import_off_loop
from gateway.settings import Settings

if TYPE_CHECKING:
    import httpx

API_PREFIX = "/api/2.0/mlflow"


class RegistryError(Exception):
    """The registry did not give an answer: unreachable, timed out, refused or broken."""


class RegistryNotFound(RegistryError):
    """The registered model, version or alias does not exist."""


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Where the registry is and how to authenticate (bearer token or basic auth)."""

    uri: str
    token: str | None = None
    username: str | None = None
    password: str | None = None
    timeout: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings, uri: str | None = None) -> RegistryConfig:
        """The registry of `settings` (or `uri`), with its credentials and timeout."""
        chosen = uri or settings.registry_uri
        if not chosen:
            raise ValueError("no registry URI: pass --registry-uri or set SWITCHYARD_REGISTRY_URI")
        return cls(
            uri=chosen,
            token=settings.registry_token,
            username=settings.registry_username,
            password=settings.registry_password,
            timeout=settings.registry_timeout,
        )


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One registered model version, as MLflow describes it."""

    name: str
    version: str
    source: str = ""
    run_id: str = ""
    status: str = "READY"
    description: str = ""
    created_ms: int = 0
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelVersion:
        """Parse MLflow's `model_version` object."""
        return cls(
            name=str(data.get("name", "")),
            version=str(data.get("version", "")),
            source=str(data.get("source", "") or ""),
            run_id=str(data.get("run_id", "") or ""),
            status=str(data.get("status", "READY") or "READY"),
            description=str(data.get("description", "") or ""),
            created_ms=int(data.get("creation_timestamp", 0) or 0),
            tags=_tags(data.get("tags")),
            aliases=tuple(str(a) for a in data.get("aliases", ()) or ()),
        )

    def to_json(self) -> dict[str, Any]:
        """MLflow's wire form again (the resolver's cache file stores it)."""
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "run_id": self.run_id,
            "status": self.status,
            "description": self.description,
            "creation_timestamp": self.created_ms,
            "tags": [{"key": k, "value": v} for k, v in sorted(self.tags.items())],
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A registered model: its tags and which version each alias points at."""

    name: str
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)  # alias -> version

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegisteredModel:
        """Parse MLflow's `registered_model` object."""
        aliases = {
            str(a.get("alias")): str(a.get("version"))
            for a in data.get("aliases", ()) or ()
            if isinstance(a, Mapping)
        }
        return cls(
            name=str(data.get("name", "")),
            description=str(data.get("description", "") or ""),
            tags=_tags(data.get("tags")),
            aliases=aliases,
        )


def _tags(raw: object) -> dict[str, str]:
    if not isinstance(raw, list):
        return {}
    return {
        str(t["key"]): str(t.get("value", "")) for t in raw if isinstance(t, Mapping) and "key" in t
    }


class MlflowRegistry:
    """Async client of one MLflow tracking server's model registry.

    `transport` is the seam for tests (an `httpx.MockTransport` speaking MLflow's wire
    format); production uses httpx's default connection pool.
    """

    def __init__(
        self, config: RegistryConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.uri = config.uri.rstrip("/")
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        """The connection pool, made by the first call. httpx (with the httpcore, anyio
        and rich it brings, ~10 MB of RSS) is imported here, so a gateway whose policies
        name no registry target never loads it, even with --registry-uri set."""
        if self._client is None:
            import httpx

            config = self.config
            headers = {"accept": "application/json"}
            auth: httpx.Auth | None = None
            if config.token:
                headers["authorization"] = f"Bearer {config.token}"
            elif config.username is not None:
                auth = httpx.BasicAuth(config.username, config.password or "")
            self._client = httpx.AsyncClient(
                base_url=self.uri + API_PREFIX,
                headers=headers,
                auth=auth,
                timeout=config.timeout,
                transport=self._transport,
            )
        return self._client

    async def __aenter__(self) -> MlflowRegistry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (if a call made one)."""
        if self._client is not None:
            await self._client.aclose()

    # Reads ----------------------------------------------------------------------

    async def get_alias(self, name: str, alias: str) -> ModelVersion:
        """The version `models:/name@alias` points at, with its tags."""
        data = await self._call("GET", "/registered-models/alias", {"name": name, "alias": alias})
        return ModelVersion.from_json(_field(data, "model_version"))

    async def get_version(self, name: str, version: str) -> ModelVersion:
        """One version of a registered model, with its tags."""
        data = await self._call("GET", "/model-versions/get", {"name": name, "version": version})
        return ModelVersion.from_json(_field(data, "model_version"))

    async def get_model(self, name: str) -> RegisteredModel:
        """A registered model with its tags and aliases."""
        data = await self._call("GET", "/registered-models/get", {"name": name})
        return RegisteredModel.from_json(_field(data, "registered_model"))

    async def list_versions(self, name: str) -> list[ModelVersion]:
        """Every version of a registered model, newest first."""
        escaped = name.replace("'", "\\'")
        params: dict[str, str] = {"filter": f"name='{escaped}'", "max_results": "200"}
        found: list[ModelVersion] = []
        while True:
            data = await self._call("GET", "/model-versions/search", params)
            found.extend(ModelVersion.from_json(v) for v in data.get("model_versions", ()) or ())
            token = data.get("next_page_token")
            if not token:
                break
            params = {**params, "page_token": str(token)}
        return sorted(found, key=lambda v: int(v.version or 0), reverse=True)

    async def get_artifact(self, run_id: str, path: str) -> bytes:
        """The bytes of one artifact file of a run (for example a model version's
        `reference.parquet`), through the tracking server's artifact proxy."""
        return await self._get_bytes("get-artifact", {"run_id": run_id, "path": path})

    async def get_version_artifact(self, name: str, version: str, path: str) -> bytes:
        """The bytes of one file of a model version's artifacts (its `MLmodel`, say),
        wherever they are stored: the server resolves the version's download URI."""
        params = {"name": name, "version": version, "path": path}
        return await self._get_bytes("model-versions/get-artifact", params)

    async def _get_bytes(self, endpoint: str, params: dict[str, str]) -> bytes:
        """A file's bytes from the tracking server (200), or RegistryError saying why."""
        await import_off_loop("httpx")  # the first time: in a thread
        import httpx  # what _http loads anyway; named here for the except clauses

        try:
            response = await self._http().get(f"{self.uri}/{endpoint}", params=params)
        except httpx.TimeoutException:
            raise RegistryError(
                f"registry {self.uri} did not answer within {self.config.timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise RegistryError(f"registry {self.uri} unreachable: {exc}") from None
        if response.status_code == 200:
            return response.content
        try:
            data = response.json()
        except ValueError:
            data = None
        raise _error(self.uri, response, data)

    # Writes ---------------------------------------------------------------------

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `models:/name@alias` at `version` (creating or moving the alias)."""
        body = {"name": name, "alias": alias, "version": version}
        await self._call("POST", "/registered-models/alias", body=body)

    async def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias from a registered model."""
        await self._call("DELETE", "/registered-models/alias", body={"name": name, "alias": alias})

    async def set_model_tag(self, name: str, key: str, value: str) -> None:
        """Set a tag on the registered model itself."""
        body = {"name": name, "key": key, "value": value}
        await self._call("POST", "/registered-models/set-tag", body=body)

    async def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        """Set a tag on one model version."""
        body = {"name": name, "version": version, "key": key, "value": value}
        await self._call("POST", "/model-versions/set-tag", body=body)

    async def create_model(self, name: str, description: str = "") -> RegisteredModel:
        """Register a new model name."""
        body = {"name": name, "description": description}
        data = await self._call("POST", "/registered-models/create", body=body)
        return RegisteredModel.from_json(_field(data, "registered_model"))

    async def create_version(
        self, name: str, source: str, *, tags: Mapping[str, str] | None = None, run_id: str = ""
    ) -> ModelVersion:
        """Register a version from an artifact URI; no tracking run is needed."""
        body: dict[str, Any] = {
            "name": name,
            "source": source,
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        if run_id:
            body["run_id"] = run_id
        data = await self._call("POST", "/model-versions/create", body=body)
        return ModelVersion.from_json(_field(data, "model_version"))

    # The wire -------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        await import_off_loop("httpx")  # the first time: in a thread
        import httpx  # what _http loads anyway; named here for the except clauses

        try:
            response = await self._http().request(method, path, params=params, json=body)
        except httpx.TimeoutException:
            raise RegistryError(
                f"registry {self.uri} did not answer within {self.config.timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise RegistryError(f"registry {self.uri} unreachable: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 200 and isinstance(data, dict):
            return data
        raise _error(self.uri, response, data)


def _field(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise RegistryError(f"registry answer has no {key!r} object")
    return value


def _error(uri: str, response: httpx.Response, data: object) -> RegistryError:
    status = response.status_code
    code = message = ""
    if isinstance(data, dict):
        code, message = str(data.get("error_code", "")), str(data.get("message", ""))
    else:
        message = response.text.strip()[:200]
    # MLflow answers a missing model or version with 404 RESOURCE_DOES_NOT_EXIST, but a
    # missing alias with 400 INVALID_PARAMETER_VALUE "Registered model alias X not found".
    missing_alias = status == 400 and "alias" in message and "not found" in message
    if code == "RESOURCE_DOES_NOT_EXIST" or status == 404 or missing_alias:
        return RegistryNotFound(message or f"not found ({status})")
    if "Host header" in message:
        return RegistryError(
            f"registry {uri} refused our Host header ({status}: {message}); start MLflow "
            "with --allowed-hosts naming the host the gateway uses"
        )
    if status in (401, 403):
        return RegistryError(
            f"registry {uri} refused the credentials ({status}): set SWITCHYARD_REGISTRY_TOKEN "
            "or SWITCHYARD_REGISTRY_USERNAME/PASSWORD"
        )
    shown = f"{code}: {message}" if code else message
    return RegistryError(f"registry {uri} answered {status}: {shown or response.reason_phrase}")
