"""A route's `flow` block: when its pools count as saturated, and how they queue then.

Part of the routing policy document (`schema.RoutingPolicy.flow`); kept apart like
`shadowspec` and `driftspec`. `flow_gate` compiles it into each variant's
`gateway.dataplane.flow.FlowGate`, whose queue the `HealthRegistry` keeps across
snapshots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from gateway.controlplane.policy.fields import Duration, problem
from gateway.dataplane.flow import LEVELS, NO_LIMIT, FlowGate, priority_level, priority_name
from gateway.dataplane.health import HealthRegistry
from gateway.observability.flow_metrics import PRIORITY_NAMES

Loc = tuple[str | int, ...]
_PRIORITY_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "enum": list(PRIORITY_NAMES)},
        {"type": "integer", "minimum": 0, "maximum": LEVELS - 1},
    ]
}
_TENANT = r"^[^\s]{1,64}$"


def _priority(value: object) -> str | int:
    """A priority as written (low, normal, high, 0..9), canonical: named levels by name."""
    level = priority_level(value)
    if level < 0 or (isinstance(value, str) and not value.strip()):
        raise problem(
            "priority",
            f"{value!r}: a priority is low, normal, high or an integer 0..9 (larger is "
            "served first)",
        )
    name = priority_name(level)
    return name if name in PRIORITY_NAMES else level


Priority = Annotated[str | int, PlainValidator(_priority), WithJsonSchema(_PRIORITY_SCHEMA)]


def _reserve_keys(value: object) -> object:
    if not isinstance(value, dict):
        return value
    out: dict[str, object] = {}
    for key, slots in value.items():
        name = str(_priority(key))
        if name in out:
            raise problem("reserve", f"priority {name!r} is listed twice")
        out[name] = slots
    return out


class FlowSpec(BaseModel):
    """Flow control of the route's pools: each variant's endpoints take at most so many
    requests at once; beyond that, requests wait in a bounded queue, highest priority
    first and fairly between tenants, and are shed when it is full (see
    docs/admission.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="Requests each endpoint of a variant may have in flight from this "
        "gateway process (with --workers N, from each worker). An endpoint at this "
        "count takes no more; when every endpoint in rotation is there, the pool is "
        "saturated and requests wait.",
    )
    max_backend_queue: int | None = Field(
        default=None,
        ge=1,
        description="An endpoint also counts as full while the backend itself reports at "
        "least this many requests waiting (vLLM num_requests_waiting, from every client; "
        "needs `load_metrics: vllm` on each variant, read every second).",
    )
    reserve: Annotated[dict[str, int], BeforeValidator(_reserve_keys)] = Field(
        default_factory=dict,
        description="Slots of each endpoint's max_in_flight kept for requests of a "
        "priority and above: {high: 2} lets low and normal requests fill max_in_flight - "
        "2, so high ones still get in at once while the others queue.",
        json_schema_extra={
            "propertyNames": {
                "anyOf": [
                    {"enum": list(PRIORITY_NAMES)},
                    {"pattern": "^[0-9]$"},
                ]
            },
            "additionalProperties": {"type": "integer", "minimum": 1},
        },
    )
    max_queue: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Requests that may wait per pool (variant) in this process; when "
        "full, the lowest priority's request of the tenant furthest over its share is "
        "shed (503, or 429 over_fair_share). 0: no queue, shed at once when saturated.",
    )
    queue_timeout: Duration = Field(
        default=5.0,
        description="Longest wait in the queue; then 503 queue_timeout (429 "
        "over_fair_share for the tenant furthest over its share). The route's total "
        "timeout applies too.",
    )
    default_priority: Priority = Field(
        default="normal",
        description="Priority of requests without an API key (keys carry their own, "
        "default normal): low, normal, high or 0..9, larger served first. The "
        "x-switchyard-priority header may lower a request's priority, and set it only "
        "when the gateway has no --api-keys.",
    )
    tenant_weights: dict[Annotated[str, Field(pattern=_TENANT)], float] = Field(
        default_factory=dict,
        description="Share of a saturated pool per tenant (the API key's tenant, else its "
        "name; `anonymous` without keys) relative to the others waiting at the same "
        "priority; tenants not listed weigh 1.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FlowSpec:
        if self.max_in_flight is None and self.max_backend_queue is None:
            raise problem(
                "flow_limit",
                "flow needs max_in_flight, max_backend_queue or both: what makes an endpoint full",
            )
        for name, slots in self.reserve.items():
            if slots < 1:
                raise problem("reserve", f"reserve.{name}: at least 1 slot")
            if priority_level(name) == 0:
                raise problem("reserve", "reserve.low keeps nothing from anyone: leave it out")
        if self.reserve:
            if self.max_in_flight is None:
                raise problem("reserve", "reserve needs max_in_flight (slots are kept of it)")
            if sum(self.reserve.values()) >= self.max_in_flight:
                raise problem(
                    "reserve",
                    f"reserve keeps {sum(self.reserve.values())} slots of max_in_flight "
                    f"{self.max_in_flight}: the lowest priority would get none",
                )
        for tenant, weight in self.tenant_weights.items():
            if not 0 < weight < 1e6:
                raise problem("tenant_weights", f"tenant_weights.{tenant}: must be above 0")
        return self

    def limits(self) -> tuple[int, ...]:
        """Per level: the in-flight count below which an endpoint takes such a request."""
        cap = self.max_in_flight if self.max_in_flight is not None else NO_LIMIT
        kept = {priority_level(name): slots for name, slots in self.reserve.items()}
        return tuple(
            cap - sum(slots for above, slots in kept.items() if above > level)
            for level in range(LEVELS)
        )


def flow_problems(
    flow: FlowSpec | None, load_metrics: Sequence[str | None]
) -> list[tuple[Loc, str]]:
    """`max_backend_queue` on a route whose variants do not report their queue."""
    if flow is None or flow.max_backend_queue is None:
        return []
    return [
        (
            ("variants", i, "load_metrics"),
            "flow.max_backend_queue needs `load_metrics: vllm` on every variant (the "
            "backend's queue is read from its /metrics)",
        )
        for i, found in enumerate(load_metrics)
        if found is None
    ]


def flow_gate(
    route: str, variant: str, flow: FlowSpec | None, health: HealthRegistry
) -> FlowGate | None:
    """The compiled gate of one variant's pool; its queue is the registry's, kept across
    snapshots."""
    if flow is None:
        return None
    return FlowGate(
        queue=health.flows.queue(route, variant),
        limits=flow.limits(),
        backend_queue=flow.max_backend_queue or 0,
        max_queue=flow.max_queue,
        timeout=flow.queue_timeout,
        default_level=priority_level(flow.default_priority),
        weights=dict(flow.tenant_weights),
    )
