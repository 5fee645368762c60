"""Kubeflow Pipelines over its REST API (v2beta1): create one run per drift episode.

The `kfp` package is not used on purpose: it pins `kubernetes<31` and pulls in much
more than two HTTP calls need. Those calls:

- `GET /apis/v2beta1/runs?filter=...`: is there already a run named for this episode?
- `POST /apis/v2beta1/runs` with `display_name`, `pipeline_version_reference` and
  `runtime_config.parameters`.

Idempotency: Kubeflow has no idempotency header, so the episode's key is put in the
run's display name, and before every try the client looks for a run of that name. A
POST that timed out after Kubeflow created the run is therefore never repeated into a
second run, neither by a retry nor by a restarted worker.

Retries: connection errors, timeouts, 429 and 5xx answers, with exponential backoff;
other answers (400 bad parameters, 401/403 token, 404 pipeline) fail at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.controlplane.policy.driftspec import KubeflowSpec, RetrySpec

RUNS_PATH = "/apis/v2beta1/runs"
MAX_BACKOFF = 30.0

Sleep = Callable[[float], Awaitable[None]]


class CallFailed(Exception):
    """An outgoing call failed for good; the message says why."""


class _Retryable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class RunRef:
    """The Kubeflow run of an episode."""

    run_id: str
    display_name: str
    created: bool  # False: it existed already (an earlier try or worker made it)


def retryable_status(status: int) -> bool:
    """Answers worth another try: rate limiting and server-side failures."""
    return status == 429 or status >= 500


async def with_retries(
    spec: RetrySpec, call: Callable[[], Awaitable[Any]], sleep: Sleep = asyncio.sleep
) -> Any:
    """Run `call` up to `spec.attempts` times while it raises `_Retryable` or a
    transport error, waiting `backoff`, then twice that, ... (capped) in between."""
    delay = spec.backoff
    last = "no attempt made"
    for attempt in range(spec.attempts):
        if attempt:
            await sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
        try:
            return await call()
        except _Retryable as exc:
            last = str(exc)
        except httpx.TransportError as exc:  # connect, read, timeouts
            last = f"{type(exc).__name__}: {exc}"
    raise CallFailed(f"gave up after {spec.attempts} attempts; last: {last}")


def check(response: httpx.Response, what: str) -> None:
    """Raise `_Retryable` or `CallFailed` for a non-2xx answer."""
    if response.is_success:
        return
    message = f"{what} answered {response.status_code}: {response.text.strip()[:300]}"
    if retryable_status(response.status_code):
        raise _Retryable(message)
    raise CallFailed(message)


class KubeflowClient:
    """Creates retraining runs in one Kubeflow Pipelines installation.

    `transport` is the test seam (an httpx transport); `env` holds the bearer token
    under `spec.token_env`.
    """

    def __init__(
        self,
        spec: KubeflowSpec,
        env: Mapping[str, str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.spec = spec
        headers = {"accept": "application/json"}
        if spec.token_env is not None:
            token = env.get(spec.token_env)
            if not token:
                raise CallFailed(f"environment variable {spec.token_env} (token_env) is not set")
            headers["authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(
            base_url=spec.endpoint,
            headers=headers,
            timeout=spec.retries.timeout,
            transport=transport,
        )
        self._sleep = sleep

    async def aclose(self) -> None:
        await self._client.aclose()

    def run_body(
        self, display_name: str, parameters: Mapping[str, Any], description: str
    ) -> dict[str, Any]:
        """The `v2beta1Run` to create."""
        spec = self.spec
        body: dict[str, Any] = {
            "display_name": display_name,
            "description": description,
            "pipeline_version_reference": {
                "pipeline_id": spec.pipeline_id,
                "pipeline_version_id": spec.pipeline_version_id,
            },
            "runtime_config": {"parameters": {**parameters, **spec.params}},
        }
        if spec.experiment_id is not None:
            body["experiment_id"] = spec.experiment_id
        if spec.service_account is not None:
            body["service_account"] = spec.service_account
        return body

    async def find_run(self, display_name: str) -> str | None:
        """The ID of a run with exactly this display name, if there is one."""
        predicate = {"key": "display_name", "operation": "EQUALS", "string_value": display_name}
        params = {"filter": json.dumps({"predicates": [predicate]}), "page_size": "1"}
        if self.spec.experiment_id is not None:
            params["experiment_id"] = self.spec.experiment_id
        response = await self._client.get(RUNS_PATH, params=params)
        check(response, "Kubeflow list runs")
        runs = response.json().get("runs") or []
        for run in runs:
            if isinstance(run, dict) and run.get("display_name") == display_name:
                return str(run.get("run_id", ""))
        return None

    async def create_run(
        self, display_name: str, parameters: Mapping[str, Any], description: str
    ) -> RunRef:
        """Create the run unless one of this name exists; retried with backoff."""
        body = self.run_body(display_name, parameters, description)

        async def attempt() -> RunRef:
            existing = await self.find_run(display_name)
            if existing is not None:
                return RunRef(existing, display_name, created=False)
            response = await self._client.post(RUNS_PATH, json=body)
            check(response, "Kubeflow create run")
            return RunRef(str(response.json().get("run_id", "")), display_name, created=True)

        result: RunRef = await with_retries(self.spec.retries, attempt, self._sleep)
        return result
