"""A route's `shadow` entries: where sampled copies of its requests go, and their limits.

Part of the routing policy document (`schema.RoutingPolicy.shadow`); kept apart like
`driftspec` and `rollout.spec` so the document's module stays readable.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.controlplane.policy.fields import (
    MODEL_VERSION_PATTERN,
    VARIANT_PATTERN,
    Duration,
    EndpointURL,
    RegistryTarget,
    problem,
    split_target,
)
from gateway.dataplane.snapshot import SHADOW_TIMEOUTS


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShadowTimeoutsSpec(_Model):
    """Time limits of shadow copies (shorter than a client's by default: nobody waits
    for a shadow's answer). A copy past one is counted as timed out and dropped."""

    connect: Duration = Field(
        default=SHADOW_TIMEOUTS.connect, description="Time to open a connection to the shadow."
    )
    first_byte: Duration = Field(
        default=SHADOW_TIMEOUTS.first_byte,
        description="Time from sending the copy to the shadow's first response byte.",
    )
    total: Duration = Field(
        default=SHADOW_TIMEOUTS.total, description="Time for the whole shadow exchange."
    )
    idle: Duration = Field(
        default=SHADOW_TIMEOUTS.idle,
        description="Longest silence between two chunks of a streamed shadow answer.",
    )


class ShadowSpec(_Model):
    """A model version that gets a copy of a sample of the route's requests.

    The copy is sent beside the primary request, never retried and never awaited by
    the client; its answer is compared with the primary's (agreement, similarity,
    latency delta) and thrown away. Under load copies are dropped first, and counted.
    """

    name: str | None = Field(
        default=None,
        pattern=VARIANT_PATTERN,
        description="Unique among the route's shadows; the `shadow` label of the shadow "
        "metrics and the comparison log. Default: the target's alias (candidate for "
        "models:/fraud@candidate), or vVERSION for a pinned version.",
    )
    target: RegistryTarget | None = Field(
        default=None,
        description="Model registry target, models:/NAME@ALIAS or models:/NAME/VERSION, "
        "resolved like a variant's (re-resolved continuously; endpoints from the "
        "version's switchyard.endpoint tag or the policy's `backends`). With `endpoints` "
        "it only labels the pool.",
    )
    endpoints: list[EndpointURL] | None = Field(
        default=None,
        min_length=1,
        description="Shadow backend pool: http:// URLs or k8s://NAMESPACE/SERVICE:PORT. "
        "It must speak the route's protocol.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        description="Model name the shadow backend expects: replaces the body's `model` "
        "(openai, ollama) or is the model in the URL (kserve-v2).",
    )
    model_version: str | None = Field(
        default=None,
        pattern=MODEL_VERSION_PATTERN,
        description="kserve-v2 routes: the backend model version copies go to "
        "(/v2/models/NAME/versions/VERSION/infer); leave out for the backend's default.",
    )
    sample: float = Field(
        default=1.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Share of the route's requests copied to the shadow, 0..1 (0 pauses it).",
    )
    max_inflight: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Copies in flight to this shadow at most; a sampled request beyond "
        "it is not copied (counted as dropped, reason max_inflight).",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Requests with a larger body are not copied (counted as skipped, "
        "reason body_too_large).",
    )
    timeouts: ShadowTimeoutsSpec = Field(
        default=ShadowTimeoutsSpec(), description="Time limits of the copies."
    )
    tolerance: float = Field(
        default=1e-4,
        ge=0,
        allow_inf_nan=False,
        description="Numbers (KServe v2 tensors, embeddings, JSON values) agree when "
        "|a - b| <= tolerance * max(1, |a|, |b|); 0 asks for exact equality.",
    )
    min_similarity: float = Field(
        default=0.5,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="LLM generations agree when the token-set overlap (Jaccard) of the "
        "two answers is at least this.",
    )

    @field_validator("endpoints")
    @classmethod
    def _distinct_endpoints(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise problem("duplicate_endpoint", "an endpoint is listed twice")
        return value

    @model_validator(mode="after")
    def _needs_backend(self) -> ShadowSpec:
        if self.endpoints is None and self.target is None:
            raise problem(
                "missing_backend",
                "a shadow needs `endpoints` (http:// URLs) or `target` (models:/NAME@ALIAS)",
            )
        if self.name is None and self.target is None:
            raise problem("missing_name", "a shadow with only `endpoints` needs a `name`")
        return self

    @property
    def label(self) -> str:
        """The shadow's name: `name`, else the target's alias or vVERSION."""
        if self.name is not None:
            return self.name
        assert self.target is not None  # the validator requires one of the two
        _, alias, version = split_target(self.target)
        return alias if alias is not None else f"v{version}"
