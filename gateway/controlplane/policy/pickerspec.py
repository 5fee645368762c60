"""A pool's `picker` block: which endpoint of a variant takes a request, by weighted
scorers (prefix-cache and session affinity, load, KV cache) and context fit.

Part of the routing policy document (`schema.RoutingPolicy.picker`, and per variant
`schema.VariantSpec.picker`); kept apart like `flowspec`. `compile_picker` turns it into
each variant's `gateway.dataplane.scorers.Picker`, whose learnt state (`PoolState`) the
`HealthRegistry` keeps across snapshots. Without a `picker` a pool picks as it always
has: the least loaded endpoint, then the lower KV-cache use (`dataplane.pick.pick`).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.controlplane.policy.fields import Duration, problem, request_key
from gateway.dataplane.health import EndpointState
from gateway.dataplane.picker_state import PickerPools
from gateway.dataplane.scorers import Picker
from gateway.observability.picker_metrics import PickerCounters

Loc = tuple[str | int, ...]
# Routes whose bodies the scorers read (messages / prompt, max_tokens).
PICKER_PROTOCOLS = ("openai", "ollama")
ISSUED = "issued"  # session.key: the gateway issues session tokens (session_tokens)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _weight(description: str) -> float | None:
    return Field(default=None, ge=0, le=1000, allow_inf_nan=False, description=description)


class ScorersSpec(_Model):
    """Weights of the scorers; each scores every endpoint 0..1 and the endpoint with the
    highest weighted sum takes the request. Leave a scorer out (or 0) to not use it."""

    queue: float | None = _weight(
        "Load: 1 / (1 + how many more requests the endpoint has than the least loaded "
        "one), counting the larger of this gateway's requests in flight and the backend's "
        "queued + running (`load_metrics: vllm`)."
    )
    kv_cache: float | None = _weight(
        "1 - the KV-cache use the backend reports (`load_metrics: vllm`; 0 otherwise)."
    )
    prefix_cache: float | None = _weight(
        "Share of the prompt's leading blocks the endpoint is estimated to hold in its "
        "prefix cache, because this gateway sent it that prefix before (see `prefix_cache`)."
    )
    session: float | None = _weight(
        "1 for the endpoint that served the request's session last, within `session.ttl` "
        "(see `session`)."
    )
    random: float | None = _weight(
        "A uniform draw per endpoint and request: a baseline for comparisons."
    )
    lora: float | None = _weight(
        "LoRA adapter affinity, for a variant that targets an adapter of a vLLM base "
        "model (`--enable-lora`; the adapter is the model name the variant sends "
        "upstream) with `load_metrics: vllm`: 1 when the endpoint runs the adapter now, "
        "0.5 when it is not loaded but a slot is free (fewer distinct adapters running or "
        "waiting than --max-loras, or no report yet), 0.25 when requests for it wait for "
        "a slot, 0 when it is absent and every slot is taken (vLLM would swap one out)."
    )

    def weights(self) -> tuple[float, float, float, float, float, float]:
        return (
            self.queue or 0.0,
            self.kv_cache or 0.0,
            self.prefix_cache or 0.0,
            self.session or 0.0,
            self.random or 0.0,
            self.lora or 0.0,
        )


class PrefixCacheSpec(_Model):
    """How prompts are cut into blocks for prefix-cache affinity, and how many block
    hashes each pool remembers."""

    block_bytes: int = Field(
        default=512,
        ge=16,
        le=65536,
        description="Bytes of the request body per block (about 4 per token: 512 is "
        "about 128 tokens). Smaller blocks match more exactly and cost more per request.",
    )
    max_blocks: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="Blocks hashed per request at most, from the start of `messages` or "
        "`prompt`: the longest prefix looked at is block_bytes x max_blocks (8 KiB, about "
        "2000 tokens, by default). Hashing costs about 0.3 us per KiB (compiled).",
    )
    table_blocks: int = Field(
        default=32768,
        ge=1024,
        le=10_000_000,
        description="Block hashes each pool remembers in this process (the least "
        "recently used go first); about 100 bytes each.",
    )


class SessionSpec(_Model):
    """Where a request's session key comes from, and how long a session stays put."""

    key: str = Field(
        pattern=r"^((header|body):.+|issued)$",
        description="`header:NAME` (for example header:x-session-id) or `body:FIELD` (a "
        "top-level JSON field, such as body:user): requests without it have no session. "
        "`issued`: the gateway issues the session: a request without a valid "
        "`x-switchyard-session` header gets a token, signed with the fleet secret, in "
        "that response header; sent back on the next turns it keeps the conversation on "
        "its endpoint (within `ttl`) and on its variant (while that variant has a weight "
        "above 0), on any replica that shares the fleet secret. A token that does not "
        "verify starts a new session (never an error).",
    )
    ttl: Duration = Field(
        default=1800.0,
        description="A session not seen for this long is forgotten (counted as expired).",
    )
    max_sessions: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="Sessions each pool remembers in this process (the least recently "
        "seen go first).",
    )

    @field_validator("key")
    @classmethod
    def _parse(cls, value: str) -> str:
        return value if value == ISSUED else request_key(value, "session_key")


class ContextSpec(_Model):
    """Context fit: endpoints whose context length cannot hold the request are skipped;
    when none can, the client gets 400 context_length_exceeded with the numbers."""

    fit: bool = Field(default=True, description="false: send requests of any size.")
    max_model_len: int | None = Field(
        default=None,
        ge=1,
        description="Context length of the variant's backends, in tokens. Leave out to "
        "read each endpoint's max_model_len from its /v1/models (vLLM) every 30 s; "
        "endpoints that report none are not checked.",
    )
    chars_per_token: float = Field(
        default=4.0,
        ge=0.5,
        le=100,
        allow_inf_nan=False,
        description="How prompt tokens are estimated: characters of the prompt's text "
        "(message contents, prompt, tools) per token. Lower refuses sooner.",
    )


class PickerSpec(_Model):
    """Which endpoint of a variant's pool takes a request: the highest weighted sum of
    scores, among endpoints in rotation whose context length fits the request (see
    docs/picking.md). Without a picker: the least loaded endpoint, then the lower KV-cache
    use."""

    scorers: ScorersSpec = Field(
        description="Scorer weights, for example {prefix_cache: 2, queue: 1, kv_cache: 1}."
    )
    spread_above: int = Field(
        default=8,
        ge=0,
        le=1_000_000,
        description="prefix_cache and session count only on endpoints with at most this "
        "many more requests (in flight, or queued + running on the backend) than the "
        "least loaded: an overloaded endpoint loses its affinity to the load scorers.",
    )
    prefix_cache: PrefixCacheSpec | None = Field(
        default=None,
        description="Block size and table bound of the prefix_cache scorer (defaults "
        "apply when it is weighed and this is left out).",
    )
    session: SessionSpec | None = Field(
        default=None,
        description="The session key of the session scorer; required when it is weighed.",
    )
    context: ContextSpec = Field(
        default=ContextSpec(), description="Context fit of requests to endpoints."
    )

    @model_validator(mode="after")
    def _consistent(self) -> PickerSpec:
        w = self.scorers
        if not any(self.scorers.weights()):
            raise problem(
                "picker_scorers",
                "picker.scorers needs a weight above 0 (queue, kv_cache, prefix_cache, "
                "session, random, lora)",
            )
        if w.session and self.session is None:
            raise problem(
                "picker_session",
                "scorers.session needs `session: {key: header:NAME}` (or body:FIELD, or "
                "issued): where the session key comes from",
            )
        if self.session is not None and not w.session:
            raise problem(
                "picker_session",
                "`session` is set but scorers.session is not: give it a weight, or "
                "leave `session` out",
            )
        if self.prefix_cache is not None and not w.prefix_cache:
            raise problem(
                "picker_prefix",
                "`prefix_cache` is set but scorers.prefix_cache is not: give it a "
                "weight, or leave `prefix_cache` out",
            )
        return self


def picker_problems(
    protocol: str,
    route_picker: PickerSpec | None,
    variants: list[PickerSpec | None],
    load_metrics: Sequence[str | None] = (),
) -> list[tuple[Loc, str]]:
    """A picker on a route whose clients do not speak an LLM API; a lora scorer on a
    variant whose backends' LoRA reports are not read (no `load_metrics: vllm`)."""
    out: list[tuple[Loc, str]] = []
    if protocol not in PICKER_PROTOCOLS:
        message = (
            f"picker applies to openai and ollama routes (it reads the messages, prompt "
            f"and max_tokens of the body), not {protocol}"
        )
        if route_picker is not None:
            out.append((("picker",), message))
        out.extend((("variants", i, "picker"), message) for i, p in enumerate(variants) if p)
        return out
    effective = [p if p is not None else route_picker for p in variants]
    issuing = [_issues(p) for p in effective]
    if any(issuing) and not all(issuing):
        # A token pins its variant only where the decided variant's picker issues them:
        # a variant that does not would drop the conversation's pin.
        out.extend(
            (
                ("variants", i, "picker") if variants[i] is not None else ("variants", i),
                "`session: {key: issued}` pins a conversation's variant, so every variant "
                "of the route must issue sessions: put it in the route's `picker` (and in "
                "each variant's own picker, if any)",
            )
            for i, issues in enumerate(issuing)
            if not issues
        )
    for i, found in enumerate(load_metrics):
        picker = effective[i] if i < len(effective) else route_picker
        if picker is not None and picker.scorers.lora and found is None:
            out.append(
                (
                    ("variants", i, "load_metrics"),
                    "scorers.lora needs `load_metrics: vllm` on the variant (the LoRA "
                    "adapters each endpoint runs are read from vLLM's /metrics)",
                )
            )
    return out


def _issues(picker: PickerSpec | None) -> bool:
    return picker is not None and picker.session is not None and picker.session.key == ISSUED


def compile_picker(
    route: str,
    variant: str,
    spec: PickerSpec | None,
    states: tuple[EndpointState, ...],
    pools: PickerPools,
    counters: PickerCounters,
    adapter: str = "",
) -> Picker | None:
    """The compiled picker of one variant's pool (None: pick as without a picker); its
    learnt state is the registry's, kept across snapshots. `adapter`: the model name the
    variant sends upstream (the lora scorer's LoRA adapter)."""
    if spec is None:
        return None
    prefix = spec.prefix_cache or PrefixCacheSpec()
    session = spec.session
    max_sessions = session.max_sessions if session is not None else 1
    pool = pools.pool(route, variant, prefix.table_blocks, max_sessions)
    backends = tuple(s.backend for s in states)
    header = b""
    field = ""
    if session is not None and session.key != ISSUED:
        source, _, name = session.key.partition(":")
        if source == "header":
            header = name.encode("latin-1")
        else:
            field = name
    return Picker(
        route,
        variant,
        spec.scorers.weights(),
        states,
        pool.slots(backends),
        tuple(counters.endpoint(route, b) for b in backends),
        counters.route(route),
        pool,
        block_bytes=prefix.block_bytes,
        max_blocks=prefix.max_blocks,
        session_header=header,
        session_field=field,
        session_issue=session is not None and session.key == ISSUED,
        session_ttl=session.ttl if session is not None else 0.0,
        spread_above=spec.spread_above,
        fit=spec.context.fit,
        max_model_len=spec.context.max_model_len or 0,
        chars_per_token=spec.context.chars_per_token,
        reported=counters.context_lengths,
        adapter=adapter,
    )
