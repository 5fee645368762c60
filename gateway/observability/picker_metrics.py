"""The endpoint picker's metrics, declared once; part of `GatewayMetrics`.

Plain integers bumped on the event loop by the scored picker (`gateway.dataplane.scorers`)
for pools whose policy declares a `picker`, rendered at scrape time. Labels are route
names and backends from the policies and fixed scorer and outcome names, never client
input, so their number is bounded by the policy files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from gateway.observability.exposition import CounterMetricFamily, GaugeMetricFamily, Metric

# Why an endpoint won a scored pick: the scorer whose weighted score put it furthest
# ahead of the runner-up (the best endpoint that scored less); `tie` when every candidate
# scored the same (the rotation chose), `single` when it was the only endpoint in
# rotation that fits the request.
WINNERS: Final = (
    "queue",
    "kv_cache",
    "prefix_cache",
    "session",
    "random",
    "lora",
    "tie",
    "single",
)
WIN_TIE: Final = 6
WIN_SINGLE: Final = 7
# What became of a request's session key: hit (it went to the session's endpoint),
# moved (that endpoint was out of rotation, overloaded or too small: it went elsewhere
# and the session follows it), miss (a key not seen, or forgotten), expired (seen, but
# longer ago than the TTL), invalid (a session token the gateway issues that it cannot
# verify: forged, damaged, of another route or another fleet secret; a new session
# starts).
SESSION_RESULTS: Final = ("hit", "moved", "miss", "expired", "invalid")
SESSION_HIT: Final = 0
SESSION_MOVED: Final = 1
SESSION_MISS: Final = 2
SESSION_EXPIRED: Final = 3
SESSION_INVALID: Final = 4
# What the endpoint a lora-scored pick chose reported of the request's adapter: running
# (in its batch), free (not loaded, a slot free: loaded without swapping one out, or no
# report), waiting (queued for a slot), swap (not there, every slot taken: another
# adapter has to go first).
LORA_RESULTS: Final = ("running", "free", "waiting", "swap")
LORA_RUNNING: Final = 0
LORA_FREE: Final = 1
LORA_WAITING: Final = 2
LORA_SWAP: Final = 3


@dataclass(eq=False, slots=True)
class PickerSeries:
    """Counts of one backend endpoint of one route's scored pools, in this process."""

    route: str
    backend: str
    picks: list[int] = field(default_factory=lambda: [0] * len(WINNERS))  # by winner
    prefix_hit_blocks: int = 0  # leading prompt blocks the endpoint was estimated to hold
    prefix_miss_blocks: int = 0  # the request's other blocks
    sessions: list[int] = field(default_factory=lambda: [0] * len(SESSION_RESULTS))
    context_skips: int = 0  # picks that passed this endpoint over: the prompt cannot fit
    lora: list[int] = field(default_factory=lambda: [0] * len(LORA_RESULTS))  # by result


@dataclass(eq=False, slots=True)
class PickerRouteSeries:
    """Counts of one route's scored pools that concern no one endpoint."""

    route: str
    context_refusals: int = 0  # requests answered 400: no endpoint of the pool fits them


@dataclass(eq=False, slots=True)
class PickerCounters:
    """Every scored pool's series, by (route, backend) and route; they outlive snapshots.

    `context_lengths` holds the context length (max_model_len) each backend reported,
    for the gauge; the load watcher sets it.
    """

    series: dict[tuple[str, str], PickerSeries] = field(default_factory=dict)
    routes: dict[str, PickerRouteSeries] = field(default_factory=dict)
    context_lengths: dict[str, int] = field(default_factory=dict)

    def endpoint(self, route: str, backend: str) -> PickerSeries:
        found = self.series.get((route, backend))
        if found is None:
            found = self.series[(route, backend)] = PickerSeries(route, backend)
        return found

    def route(self, route: str) -> PickerRouteSeries:
        found = self.routes.get(route)
        if found is None:
            found = self.routes[route] = PickerRouteSeries(route)
        return found


def picker_families(c: PickerCounters) -> Iterator[Metric]:
    picks = CounterMetricFamily(
        "switchyard_picker_picks",
        "Scored endpoint picks (pools with a `picker`), by route, backend and the scorer "
        "that decided: the one whose weighted score put the endpoint furthest ahead of the "
        "runner-up, the best endpoint that scored less (queue, kv_cache, prefix_cache, "
        "session, random, lora); tie (every candidate scored the same: the rotation chose) or "
        "single (the only endpoint in rotation that fits).",
        labels=["route", "backend", "scorer"],
    )
    prefix = CounterMetricFamily(
        "switchyard_picker_prefix_blocks",
        "Prompt blocks of requests picked with the prefix_cache scorer, by route, backend "
        "and result: hit (a leading block the gateway estimates the endpoint holds in its "
        "prefix cache, because it served that prefix before), miss (the other blocks).",
        labels=["route", "backend", "result"],
    )
    sessions = CounterMetricFamily(
        "switchyard_picker_sessions",
        "Requests with a session key (session scorer), by route, the backend that took "
        "them and result: hit (the session's endpoint), moved (that endpoint was out of "
        "rotation, overloaded or too small; the session follows the new one), miss (a key "
        "not known here), expired (known, but idle longer than the TTL), invalid (a "
        "gateway-issued session token that does not verify: a new session starts).",
        labels=["route", "backend", "result"],
    )
    lora = CounterMetricFamily(
        "switchyard_picker_lora",
        "Picks of pools with the lora scorer, by route, the backend picked and what it "
        "reported of the request's LoRA adapter: running (in its batch), free (not "
        "loaded, a slot free, or no report), waiting (queued for a slot), swap (absent "
        "and every slot taken: vLLM swaps an adapter out).",
        labels=["route", "backend", "result"],
    )
    skips = CounterMetricFamily(
        "switchyard_picker_context_skips",
        "Scored picks that passed an endpoint over because the request's estimated prompt "
        "tokens plus max_tokens exceed its context length (max_model_len).",
        labels=["route", "backend"],
    )
    refusals = CounterMetricFamily(
        "switchyard_picker_context_refusals",
        "Requests answered 400 context_length_exceeded by the gateway: no endpoint of the "
        "pool has the context length for the estimated prompt tokens plus max_tokens.",
        labels=["route"],
    )
    lengths = GaugeMetricFamily(
        "switchyard_backend_max_model_len",
        "Context length (max_model_len) a backend reports on /v1/models, read for pools "
        "with a picker; tokens.",
        labels=["backend"],
    )
    for s in sorted(list(c.series.values()), key=lambda s: (s.route, s.backend)):
        labels = [s.route, s.backend]
        for i, count in enumerate(s.picks):
            if count:
                picks.add_metric([*labels, WINNERS[i]], count)
        if s.prefix_hit_blocks or s.prefix_miss_blocks:
            prefix.add_metric([*labels, "hit"], s.prefix_hit_blocks)
            prefix.add_metric([*labels, "miss"], s.prefix_miss_blocks)
        for i, count in enumerate(s.sessions):
            if count:
                sessions.add_metric([*labels, SESSION_RESULTS[i]], count)
        for i, count in enumerate(s.lora):
            if count:
                lora.add_metric([*labels, LORA_RESULTS[i]], count)
        if s.context_skips:
            skips.add_metric(labels, s.context_skips)
    for r in sorted(list(c.routes.values()), key=lambda r: r.route):
        refusals.add_metric([r.route], r.context_refusals)
    for backend, tokens in sorted(list(c.context_lengths.items())):
        lengths.add_metric([backend], tokens)
    yield from (picks, prefix, sessions, lora, skips, refusals, lengths)
