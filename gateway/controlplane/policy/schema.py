"""The routing policy document: the versioned contract SREs write in `policies/*.yaml`.

Every model forbids unknown keys (a typo must be an error, never a silently ignored
setting) and every field carries a description, because these models are also the
source of `policies/schema.json` that editors use for completion and inline errors.

Defaults are taken from the runtime dataclasses in `gateway.dataplane.snapshot`, so the
documented default and the compiled default cannot drift apart.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.controlplane.policy.driftspec import DriftSpec
from gateway.controlplane.policy.fields import (
    MODEL_VERSION_PATTERN,
    VARIANT_PATTERN,
    BackendKey,
    Duration,
    EndpointURL,
    HeaderName,
    RegistryTarget,
    RetryOn,
    problem,
    request_key,
)
from gateway.controlplane.policy.flowspec import FlowSpec
from gateway.controlplane.policy.groundtruthspec import GroundTruthSpec
from gateway.controlplane.policy.pickerspec import PickerSpec
from gateway.controlplane.policy.rolloutspec import ExperimentSpec, RolloutSpec
from gateway.controlplane.policy.shadowspec import ShadowSpec
from gateway.controlplane.policy.signaturespec import SignatureSpec
from gateway.dataplane.snapshot import (
    HealthCheck,
    OutlierPolicy,
    RetryPolicy,
    Timeouts,
)

API_VERSION = "switchyard/v1"
KIND = "RoutingPolicy"
SCHEMA_ID = "urn:switchyard:routing-policy:v1"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

ROUTE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
_TIMEOUTS = Timeouts()
_RETRIES = RetryPolicy()
_OUTLIER = OutlierPolicy()
_HEALTH = HealthCheck(path="")


def _default_retry_on() -> tuple[str | int, ...]:
    flags = (
        ("connect-error", _RETRIES.on_connect_error),
        ("reset", _RETRIES.on_reset),
        ("timeout", _RETRIES.on_timeout),
    )
    return (*(name for name, on in flags if on), *sorted(_RETRIES.statuses))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthCheckSpec(_Model):
    """Active health checking: probe each endpoint off the request path; endpoints that
    fail leave rotation (like passive ejection) until probes pass again."""

    enabled: bool = Field(
        default=True,
        description="false turns probing off, including the protocol's default probe.",
    )
    path: str | None = Field(
        default=None,
        pattern=r"^/[^\s?#]*(\?[^\s#]*)?$",
        description="Path probed with GET (after the endpoint's base path); 2xx is "
        "healthy. `{model}` stands for the variant's backend model name (NAME/versions/V "
        "with `model_version`). Default by protocol: kserve-v2 /v2/models/{model}/ready, "
        "json /readyz, openai /health, ollama /api/version.",
    )
    interval: Duration = Field(default=_HEALTH.interval, description="Time between probes.")
    timeout: Duration = Field(
        default=_HEALTH.timeout, description="A probe not answered in this time failed."
    )
    unhealthy_after: int = Field(
        default=_HEALTH.unhealthy_after,
        ge=1,
        description="Failed probes in a row that take an endpoint out of rotation.",
    )
    healthy_after: int = Field(
        default=_HEALTH.healthy_after,
        ge=1,
        description="Passed probes in a row that bring an endpoint taken out by probes back.",
    )


class VariantSpec(_Model):
    """One weighted choice of a route: a pool of backend endpoints serving one model version."""

    name: str = Field(
        pattern=VARIANT_PATTERN,
        description="Unique name within the route; shown in metrics, logs and the "
        "x-switchyard-variant response header (for example champion, challenger).",
    )
    weight: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description="Relative share of traffic. Shares are weight / sum of all weights; "
        "0 takes the variant out of the split but overrides can still reach it.",
    )
    endpoints: list[EndpointURL] | None = Field(
        default=None,
        min_length=1,
        description="Backend pool: plain http:// URLs (host, port, optional base path), or "
        "k8s://NAMESPACE/SERVICE:PORT for the ready pods of a Kubernetes Service, kept "
        "current by an EndpointSlice watch (PORT: the Service port's name or the pods' port "
        "number). Requests go to the available endpoint with the fewest requests in flight.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        description="Model name sent to the backend: replaces the `model` field of the "
        "request body (openai, ollama), or is the model name in the backend's URL "
        "(kserve-v2: /v2/models/NAME/...). Leave out to pass the client's value through.",
    )
    model_version: str | None = Field(
        default=None,
        pattern=MODEL_VERSION_PATTERN,
        description="kserve-v2 routes: the backend model version requests go to "
        "(/v2/models/NAME/versions/VERSION/...). Leave out to pass on the version the "
        "client asked for, if any (the backend's default otherwise).",
    )
    grpc_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="kserve-v2 routes: the port of the backends' KServe v2 gRPC service "
        "(Triton: 8001) on the hosts of `endpoints`, which the gateway's gRPC front "
        "(GRPCInferenceService, default port 8082) calls. Leave out when the backends "
        "serve no gRPC: gRPC clients then get the route's other variants or UNAVAILABLE.",
    )
    health_check: HealthCheckSpec | None = Field(
        default=None,
        description="Active health check of this variant's endpoints; fields set here "
        "override the route's `health_check`.",
    )
    load_metrics: Literal["vllm"] | None = Field(
        default=None,
        description="Where the backends report their own load: `vllm` scrapes each "
        "endpoint's /metrics (num_requests_waiting, num_requests_running, "
        "kv_cache_usage_perc) every second, off the request path, and requests go to the "
        "endpoint with the least load (the larger of the gateway's in-flight count and "
        "the backend's queued + running), then the lower KV-cache use.",
    )
    picker: PickerSpec | None = Field(
        default=None,
        description="How an endpoint of this variant's pool is picked: weighted scorers "
        "(prefix_cache, session, queue, kv_cache, random) and context fit; replaces the "
        "route's `picker` for this variant. Leave out (and the route's too) for the least "
        "loaded endpoint, then the lower KV-cache use.",
    )
    backend_protocol: Literal["openai", "ollama"] | None = Field(
        default=None,
        description="API the variant's backends speak, when it differs from the route's "
        "`protocol`: the gateway translates between OpenAI and Ollama (requests, "
        "responses, streams, usage, errors; see the README's translation table). Leave "
        "out when the backends speak the clients' protocol.",
    )
    target: RegistryTarget | None = Field(
        default=None,
        description="Model registry target, models:/NAME@ALIAS or models:/NAME/VERSION. "
        "Without `endpoints`, the gateway resolves the alias to a version (re-resolved "
        "continuously, so moving the alias moves traffic) and serves it from the "
        "version's switchyard.endpoint tag or the policy's `backends` entry; with "
        "`endpoints` it only labels the pool.",
    )

    @field_validator("endpoints")
    @classmethod
    def _distinct_endpoints(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            seen: set[str] = set()
            for url in value:
                if url in seen:
                    raise problem("duplicate_endpoint", f"endpoint {url} is listed twice")
                seen.add(url)
        return value

    @model_validator(mode="after")
    def _needs_backend(self) -> VariantSpec:
        if self.endpoints is None and self.target is None:
            raise problem(
                "missing_backend",
                "a variant needs `endpoints` (http:// URLs) or `target` (models:/NAME@ALIAS)",
            )
        return self


class BackendSpec(_Model):
    """Where one registered model version is served, when the policy rather than the
    registry names the endpoints."""

    endpoints: list[EndpointURL] = Field(
        min_length=1,
        description="Backend pool serving this model version: plain http:// URLs or "
        "k8s://NAMESPACE/SERVICE:PORT.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        description="Model name sent to the backend for this version (replaces the "
        "request's `model`); wins over the variant's `model`.",
    )

    @field_validator("endpoints")
    @classmethod
    def _distinct_endpoints(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise problem("duplicate_endpoint", "an endpoint is listed twice")
        return value


class StickySpec(_Model):
    """Keep each user on one variant: hash a request key onto the weight line."""

    hash_on: str = Field(
        pattern=r"^(header|body):.+$",
        description="Where the sticky key comes from: `header:NAME` (case-insensitive) or "
        "`body:FIELD` (a top-level JSON field, such as body:user). Requests without the "
        "key are split by weight at random.",
    )

    @field_validator("hash_on")
    @classmethod
    def _parse(cls, value: str) -> str:
        return request_key(value, "sticky_key")

    @property
    def source(self) -> str:
        """`header` or `body`."""
        return self.hash_on.partition(":")[0]

    @property
    def key(self) -> str:
        """The header name (lower-case) or body field name."""
        return self.hash_on.partition(":")[2]


class MatchSpec(_Model):
    """Conditions of an override; all of them must hold."""

    header: dict[HeaderName, str] = Field(
        min_length=1,
        description="Request headers that must all be present with exactly these values "
        "(names are case-insensitive, values are not).",
    )

    @field_validator("header", mode="before")
    @classmethod
    def _distinct_names(cls, value: object) -> object:
        if isinstance(value, dict):
            lowered = [str(name).lower() for name in value]
            for name in lowered:
                if lowered.count(name) > 1:
                    raise problem("duplicate_header", f"header {name!r} is listed twice")
        return value


class OverrideSpec(_Model):
    """Send matching requests to one variant, before stickiness and weights apply."""

    match: MatchSpec = Field(description="What a request must carry for this override.")
    variant: str = Field(description="Name of the variant that serves matching requests.")


class TimeoutsSpec(_Model):
    """Upstream time limits. Durations: 250ms, 10s, 2m, or a number of seconds."""

    connect: Duration = Field(
        default=_TIMEOUTS.connect, description="Time to open a TCP connection to a backend."
    )
    first_byte: Duration = Field(
        default=_TIMEOUTS.first_byte,
        description="Time from sending the request to the first response byte (model queue "
        "plus prefill for LLMs).",
    )
    total: Duration = Field(
        default=_TIMEOUTS.total, description="Time for the whole upstream exchange."
    )
    idle: Duration = Field(
        default=_TIMEOUTS.idle,
        description="Longest silence between two chunks of a streamed response.",
    )


class RetriesSpec(_Model):
    """When a failed try is repeated on another endpoint or fallback variant."""

    attempts: int = Field(
        default=_RETRIES.attempts,
        ge=1,
        le=10,
        description="Total tries per request, the first one included (1 = no retries).",
    )
    budget: float = Field(
        default=_RETRIES.budget,
        ge=0,
        le=1,
        description="Retries may add at most this share of the route's requests, so a "
        "failing backend does not get a retry storm.",
    )
    min_per_second: float = Field(
        default=_RETRIES.min_per_second,
        ge=0,
        allow_inf_nan=False,
        description="Retries per second always allowed, so a quiet route can still retry.",
    )
    on: tuple[RetryOn, ...] = Field(
        default=_default_retry_on(),
        description="Failures that are retried: connect-error, reset (connection dropped "
        "before a response), timeout (first byte; the model may have run already) and "
        "HTTP statuses.",
    )


class OutlierSpec(_Model):
    """Passive health checking: endpoints that keep failing leave rotation for a while."""

    consecutive_failures: int = Field(
        default=_OUTLIER.consecutive_failures,
        ge=1,
        description="Failures in a row that eject an endpoint; one success resets the count.",
    )
    base_ejection: Duration = Field(
        default=_OUTLIER.base_ejection,
        description="First ejection time; each further ejection lasts this times the count.",
    )
    max_ejection: Duration = Field(
        default=_OUTLIER.max_ejection, description="Longest an endpoint stays ejected."
    )
    max_ejection_percent: float = Field(
        default=_OUTLIER.max_ejection_percent,
        ge=0,
        le=100,
        description="At most this percentage of a pool is ejected at once, so a bad "
        "detector cannot empty the pool.",
    )


class RoutingPolicy(_Model):
    """How the gateway serves one route: variants and their weights, stickiness,
    overrides, fallbacks, timeouts, retries and outlier ejection."""

    api_version: Literal["switchyard/v1"] = Field(
        alias="apiVersion", description="Version of this document format."
    )
    kind: Literal["RoutingPolicy"] = Field(description="Type of this document.")
    route: str = Field(
        pattern=ROUTE_PATTERN,
        description="What clients ask for: the OpenAI/Ollama `model` field, or the model or "
        "service name in the URL path. Unique across all policy files.",
    )
    protocol: Literal["openai", "ollama", "kserve-v2", "json"] = Field(
        default="openai",
        description="API the clients of this route speak: openai, ollama, kserve-v2 "
        "(Triton, KServe) or json (BentoML and plain JSON services).",
    )
    variants: list[VariantSpec] = Field(
        min_length=1,
        max_length=16,
        description="Versions that share the route's traffic by weight. Their order lays "
        "out the weight line that sticky keys hash onto: append new variants at the end.",
    )
    backends: dict[BackendKey, BackendSpec] = Field(
        default_factory=dict,
        description="Serving endpoints of registry model versions, keyed by NAME/VERSION "
        "(for example fraud-detector/7). A variant whose `target` resolves to a version "
        "listed here is served by this entry; other versions use their "
        "switchyard.endpoint tag in the registry.",
    )
    sticky: StickySpec | None = Field(
        default=None, description="Keep each user on the same variant on every replica."
    )
    overrides: tuple[OverrideSpec, ...] = Field(
        default=(), description="Header rules checked in order; the first match wins."
    )
    fallback: tuple[str, ...] = Field(
        default=(),
        description="Variant names tried in this order when the chosen variant fails.",
    )
    shadow: tuple[ShadowSpec, ...] = Field(
        default=(),
        max_length=8,
        description="Versions that get a copy of a sample of the route's requests, "
        "compared with the primary's answers (GET /admin/shadow/{route}, the "
        "switchyard_shadow_* metrics) and never returned to clients.",
    )
    timeouts: TimeoutsSpec = Field(default=TimeoutsSpec(), description="Upstream time limits.")
    retries: RetriesSpec = Field(default=RetriesSpec(), description="Retry policy.")
    outlier: OutlierSpec = Field(default=OutlierSpec(), description="Outlier ejection.")
    max_body_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Largest request body accepted for this route, in bytes (413 above). "
        "Leave out for the gateway-wide limit.",
    )
    flow: FlowSpec | None = Field(
        default=None,
        description="Flow control of each variant's pool: a cap on requests in flight per "
        "endpoint; beyond it requests wait in a bounded queue, highest priority first and "
        "fairly between tenants, and are shed with 429/503 when it is full. Leave out: "
        "every request goes straight to the backends.",
    )
    picker: PickerSpec | None = Field(
        default=None,
        description="How an endpoint of each variant's pool is picked (a variant's own "
        "`picker` replaces it): weighted scorers such as {prefix_cache: 2, queue: 1, "
        "kv_cache: 1, session: 3}, prefix-cache and session affinity, context fit (see "
        "docs/picking.md). openai and ollama routes.",
    )
    health_check: HealthCheckSpec | None = Field(
        default=None,
        description="Active health check of every endpoint of the route. kserve-v2 and "
        "json routes probe by default (model ready, /readyz); openai and ollama routes "
        "only when this is set.",
    )
    drift: DriftSpec | None = Field(
        default=None,
        description="Sample live inputs into rolling windows per model version, compare "
        "them with reference data (Evidently, in the drift worker process) and act on "
        "drift: save the window, start a Kubeflow retraining run, call a webhook.",
    )
    ground_truth: GroundTruthSpec | None = Field(
        default=None,
        description="Join true labels (POST /v1/feedback with `label` and the response's "
        "x-switchyard-feedback-id) with what each version predicted: accuracy, "
        "precision/recall/F1 and AUC per variant and version (GET "
        "/admin/ground-truth/{route}, the switchyard_ground_truth_* metrics).",
    )
    signature: SignatureSpec | None = Field(
        default=None,
        description="MLflow signatures and semantic versions of the route's registry "
        "versions: check requests against the signature of the version they are routed "
        "to (validate_requests), and keep versions whose switchyard.semver MAJOR or "
        "inputs are incompatible with the champion's off the route unless listed in "
        "allow_incompatible (see docs/registry.md).",
    )
    rollout: RolloutSpec | None = Field(
        default=None,
        description="Progressive rollout of a challenger variant: its share of traffic "
        "steps up while analysis gates (error rate, p99 latency, shadow agreement, "
        "significance) hold, is rolled back to 0 on the first failed gate, and on "
        "success the registry alias moves to it.",
    )
    experiment: ExperimentSpec | None = Field(
        default=None,
        description="Compare the variants on outcome feedback (POST /v1/feedback with "
        "the response's x-request-id): conversion rates, lift, two-proportion z-test, "
        "rewards with Welch's t-test. Implied by `rollout`.",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def policy_json_schema() -> dict[str, Any]:
    """The JSON schema of one policy document, as committed in `policies/schema.json`."""
    schema = RoutingPolicy.model_json_schema(by_alias=True)
    return {"$schema": JSON_SCHEMA_DIALECT, "$id": SCHEMA_ID, **schema}


def render_json_schema() -> str:
    """`policy_json_schema()` as deterministic text: sorted keys, 2-space indent."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def fields_at(loc: tuple[str | int, ...]) -> tuple[str, ...]:
    """The keys a policy document allows at `loc` (for "did you mean" hints)."""
    model: type[BaseModel] = RoutingPolicy
    for part in loc:
        if isinstance(part, int):
            continue
        info = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)),
            None,
        )
        found = _model_in(info.annotation) if info is not None else None
        if found is None:
            return ()
        model = found
    return tuple(f.alias or n for n, f in model.model_fields.items())


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (tuple, list, Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
