"""The scored endpoint picker: block hashing, its bounded tables, scores and weights,
sessions and their TTL, context fit."""

from __future__ import annotations

import random

import orjson
import pytest

from gateway.controlplane.backends.load import set_lora
from gateway.dataplane.health import EndpointState
from gateway.dataplane.picker_state import MAX_SLOTS, PoolState
from gateway.dataplane.scorers import (
    Ask,
    Picker,
    max_tokens_of,
    prefix_hashes,
    prompt_chars,
)
from gateway.errors import ContextTooLong
from gateway.observability.picker_metrics import (
    SESSION_EXPIRED,
    SESSION_HIT,
    SESSION_MISS,
    SESSION_MOVED,
    WINNERS,
    PickerCounters,
    picker_families,
)

SYSTEM_A = "You are the billing assistant of Example Corp. " * 40
SYSTEM_B = "You answer questions about the physics of stars. " * 40


def chat(system: str, turn: str, **extra: object) -> bytes:
    body = {
        "model": "chat",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": turn}],
        **extra,
    }
    return orjson.dumps(body)


def make_picker(
    n: int = 3,
    weights: tuple[float, float, float, float, float, float] = (1, 1, 2, 0, 0, 0),
    pool: PoolState | None = None,
    **options: object,
) -> tuple[Picker, list[EndpointState], PickerCounters]:
    states = [EndpointState(f"10.0.0.{i}:8000") for i in range(n)]
    pool = pool or PoolState()
    counters = PickerCounters()
    backends = tuple(s.backend for s in states)
    picker = Picker(
        "chat",
        "a",
        weights,
        tuple(states),
        pool.slots(backends),
        tuple(counters.endpoint("chat", b) for b in backends),
        counters.route("chat"),
        pool,
        **options,  # type: ignore[arg-type]
    )
    return picker, states, counters


def ask(picker: Picker, body: bytes, headers: dict[bytes, bytes] | None = None) -> Ask:
    parsed = orjson.loads(body)
    found = picker.ask(body, parsed, headers or {})
    picker.check_fit(found, parsed)
    return found


# Block hashing ---------------------------------------------------------------------


def test_hashes_are_chained_over_whole_blocks_from_the_messages_key() -> None:
    one = chat(SYSTEM_A, "What is my balance? " * 10)
    two = chat(SYSTEM_A, "Why was I charged twice this month? " * 10)
    a, b = prefix_hashes(one, 64, 1000), prefix_hashes(two, 64, 1000)
    start = one.index(b'"messages"')
    assert len(a) == (len(one) - start) // 64  # whole blocks only
    shared = next(k for k in range(min(len(a), len(b))) if a[k] != b[k])
    # Same bytes up to the first differing byte: the blocks before it hash alike.
    differ = next(i for i in range(len(one)) if one[i] != two[i])
    assert shared == (differ - start) // 64
    # Chained: once two prefixes differ, no later block hashes alike either.
    assert all(x != y for x, y in zip(a[shared:], b[shared:], strict=False))
    # The fields before "messages" do not count: another model name, same hashes.
    moved = one.replace(b'"model":"chat"', b'"model":"chat-large-v2"')
    assert prefix_hashes(moved, 64, 1000) == a


def test_hashes_of_a_completion_prompt_and_the_limits() -> None:
    body = orjson.dumps({"model": "m", "prompt": SYSTEM_B})
    hashes = prefix_hashes(body, 128, 1000)
    assert len(hashes) == (len(body) - body.index(b'"prompt"')) // 128
    assert prefix_hashes(body, 128, 3) == hashes[:3]
    assert prefix_hashes(b'{"model":"m"}', 64, 10) == []  # shorter than a block


def test_same_crc_at_two_depths_is_two_blocks() -> None:
    hashes = prefix_hashes(b"x" * 4096, 16, 256)
    assert len(set(hashes)) == len(hashes)
    assert all(h >> 32 == k for k, h in enumerate(hashes))


# The pool's tables -------------------------------------------------------------------


def test_depths_are_the_leading_blocks_each_endpoint_was_sent() -> None:
    pool = PoolState()
    a = prefix_hashes(chat(SYSTEM_A, "first question " * 10), 64, 1000)
    b = prefix_hashes(chat(SYSTEM_A, "another one entirely " * 10), 64, 1000)
    pool.record(a, 0)
    assert pool.depths(a) == {0: len(a)}
    shared = next(k for k in range(len(a)) if a[k] != b[k])
    assert pool.depths(b) == {0: shared}
    pool.record(b, 2)
    assert pool.depths(b) == {0: shared, 2: len(b)}
    assert pool.depths(prefix_hashes(chat(SYSTEM_B, "x"), 64, 1000)) == {}


def test_the_prefix_table_is_bounded_and_keeps_what_is_used() -> None:
    pool = PoolState(table_blocks=1000)
    hot = prefix_hashes(chat(SYSTEM_A, "hot"), 64, 8)
    pool.record(hot, 1)
    for i in range(200):
        pool.record(prefix_hashes(chat(f"tenant {i} " * 100, "q"), 64, 8), i % 3)
        assert pool.blocks() <= 1000
        if i % 20 == 0:
            pool.record(hot, 1)  # used again: carried into the young generation
    assert pool.depths(hot) == {1: len(hot)}
    first = prefix_hashes(chat("tenant 0 " * 100, "q"), 64, 8)
    assert pool.depths(first) == {}  # not used since: gone


def test_slots_are_stable_across_reloads_and_start_over_past_the_cap() -> None:
    pool = PoolState()
    assert pool.slots(("a:1", "b:1")) == (0, 1)
    assert pool.slots(("b:1", "c:1")) == (1, 2)  # b keeps its slot
    pool.record([7, 8], 1)
    many = tuple(f"h{i}:1" for i in range(MAX_SLOTS))
    assert pool.slots(many) == tuple(range(MAX_SLOTS))
    assert pool.depths([7, 8]) == {}  # the tables started over with the slots


# Scores and weights ------------------------------------------------------------------


def test_without_load_the_endpoint_holding_the_prefix_wins() -> None:
    picker, states, counters = make_picker()
    first = picker.choose(ask(picker, chat(SYSTEM_A, "q1")), 1.0, 0)
    for turn in range(1, 10):
        assert picker.choose(ask(picker, chat(SYSTEM_A, f"question {turn}")), 1.0, turn) == first
    # Another prefix, nobody holds it: equal scores, the rotation decides.
    assert picker.choose(ask(picker, chat(SYSTEM_B, "q1")), 1.0, first + 1) == (first + 1) % 3
    series = counters.endpoint("chat", states[first].backend)
    assert series.picks[WINNERS.index("prefix_cache")] == 9
    assert series.prefix_hit_blocks > 0 and series.prefix_miss_blocks > 0


def test_an_overloaded_holder_loses_its_affinity() -> None:
    picker, states, counters = make_picker(spread_above=2)
    holder = picker.choose(ask(picker, chat(SYSTEM_A, "q1")), 1.0, 0)
    states[holder].in_flight = 2  # at least + spread_above: still affine
    assert picker.choose(ask(picker, chat(SYSTEM_A, "q2")), 1.0, 0) == holder
    states[holder].backlog = 3  # the backend's own report counts as well
    moved = picker.choose(ask(picker, chat(SYSTEM_A, "q3")), 1.0, 0)
    assert moved != holder
    assert counters.endpoint("chat", states[moved].backend).picks[WINNERS.index("queue")] == 1


def test_queue_alone_is_least_loaded_and_ties_rotate() -> None:
    picker, states, _ = make_picker(weights=(1, 0, 0, 0, 0, 0))
    states[0].in_flight, states[1].in_flight, states[2].in_flight = 3, 1, 2
    body = chat("s", "u")
    assert picker.choose(ask(picker, body), 1.0, 0) == 1
    states[1].in_flight = 3
    states[2].in_flight = 3
    assert {picker.choose(ask(picker, body), 1.0, t) for t in range(3)} == {0, 1, 2}


def test_kv_cache_weighs_against_queue() -> None:
    picker, states, _ = make_picker(weights=(1, 3, 0, 0, 0, 0))
    states[0].in_flight = 1
    states[1].kv_usage = 0.9
    states[2].kv_usage = 0.8
    # 0: 0.5 + 3 = 3.5; 1: 1 + 0.3 = 1.3; 2: 1 + 0.6 = 1.6
    assert picker.choose(ask(picker, chat("s", "u")), 1.0, 1) == 0


def test_random_alone_spreads_over_the_pool() -> None:
    picker, _, _ = make_picker(n=4, weights=(0, 0, 0, 0, 1, 0))
    picker.pool.rng.seed(7)
    got = [picker.choose(ask(picker, chat(SYSTEM_A, "q")), 1.0, 0) for _ in range(400)]
    assert all(60 < got.count(i) < 140 for i in range(4))


def test_ejected_endpoints_are_never_picked() -> None:
    picker, states, _ = make_picker(n=2)
    states[0].ejected_until = 10.0
    states[1].ejected_until = 10.0
    assert picker.choose(ask(picker, chat(SYSTEM_A, "q")), 1.0, 0) == -1
    states[1].ejected_until = 0.0
    assert picker.choose(ask(picker, chat(SYSTEM_A, "q")), 1.0, 0) == 1


def test_choose_adds_up_the_parts_it_explains() -> None:
    rng = random.Random(3)
    for trial in range(200):
        w = [float(rng.choice([0, 0.5, 1, 2, 3])) for _ in range(5)]
        weights = (w[0], w[1], w[2], w[3], 0.0, w[4])
        if not any(weights):
            continue
        picker, states, _ = make_picker(
            n=5, weights=weights, session_header=b"x-session-id", adapter="sql"
        )
        for _ in range(rng.randrange(4)):
            system = rng.choice([SYSTEM_A, SYSTEM_B])
            picker.choose(ask(picker, chat(system, "warm"), {b"x-session-id": b"s1"}), 1.0, 0)
        for state in states:
            state.in_flight = rng.randrange(8)
            state.kv_usage = rng.random()
            running = tuple(rng.sample(["sql", "law", "med"], rng.randrange(3)))
            waiting = tuple(rng.sample(["sql", "law", "med"], rng.randrange(2)))
            set_lora(state, running, waiting, rng.choice([0, 1, 2, 3]))
        found = ask(picker, chat(rng.choice([SYSTEM_A, SYSTEM_B]), "q"), {b"x-session-id": b"s1"})
        rows = picker.explain(found, 1.0)
        top = max(row["total"] for row in rows)
        chosen = picker.choose(found, 1.0, trial)
        assert rows[chosen]["total"] == pytest.approx(top, abs=1e-3), (weights, rows)


# Sessions ----------------------------------------------------------------------------


def test_a_session_stays_on_its_endpoint_until_the_ttl() -> None:
    picker, states, counters = make_picker(
        weights=(1, 0, 0, 3, 0, 0), session_header=b"x-session-id", session_ttl=60.0
    )
    head = {b"x-session-id": b"conv-1"}
    first = picker.choose(ask(picker, chat("s", "u"), head), 0.0, 0)
    states[first].in_flight = 1  # busier, yet within spread_above: the session holds
    for t in range(1, 5):
        assert picker.choose(ask(picker, chat("s", f"u{t}"), head), t * 10.0, t) == first
    counts = counters.endpoint("chat", states[first].backend).sessions
    assert counts[SESSION_MISS] == 1 and counts[SESSION_HIT] == 4
    # Idle past the TTL: expired, picked afresh (least loaded, away from `first`).
    again = picker.choose(ask(picker, chat("s", "u"), head), 40.0 + 61.0, 0)
    assert again != first
    assert counters.endpoint("chat", states[again].backend).sessions[SESSION_EXPIRED] == 1


def test_a_session_moves_with_an_ejected_endpoint_and_stays_moved() -> None:
    picker, states, counters = make_picker(
        n=2, weights=(1, 0, 0, 3, 0, 0), session_field="user", session_ttl=60.0
    )
    body = chat("s", "u", user="alice")
    first = picker.choose(ask(picker, body), 0.0, 0)
    states[first].ejected_until = 5.0
    moved = picker.choose(ask(picker, body), 1.0, 0)
    assert moved == 1 - first
    assert counters.endpoint("chat", states[moved].backend).sessions[SESSION_MOVED] == 1
    states[first].ejected_until = 0.0
    assert picker.choose(ask(picker, body), 6.0, 0) == moved  # the session followed


def test_the_session_table_is_bounded() -> None:
    pool = PoolState(max_sessions=50)
    picker, _, _ = make_picker(
        weights=(1, 0, 0, 1, 0, 0), pool=pool, session_header=b"x-session-id", session_ttl=60.0
    )
    for i in range(500):
        picker.choose(ask(picker, chat("s", "u"), {b"x-session-id": b"s%d" % i}), 1.0, i)
        assert len(pool.sessions) <= 50
    assert b"s499" in pool.sessions and b"s0" not in pool.sessions


# Context fit -------------------------------------------------------------------------


def test_token_estimates_and_max_tokens() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "a" * 400},
            {
                "role": "user",
                "content": [{"type": "text", "text": "b" * 40}, {"type": "image_url"}],
            },
        ],
        "tools": [{"type": "function"}],
    }
    assert prompt_chars(body) == (440 + len(orjson.dumps(body["tools"])), 0)
    assert prompt_chars({"prompt": [[1, 2, 3], [4]]}) == (0, 4)
    assert prompt_chars({"prompt": "abc", "system": "de"}) == (5, 0)
    assert max_tokens_of({"max_tokens": 10}) == 10
    assert max_tokens_of({"max_completion_tokens": 7, "max_tokens": 10}) == 7
    assert max_tokens_of({"options": {"num_predict": 5}}) == 5
    assert max_tokens_of({"max_tokens": True}) == 0
    assert max_tokens_of(None) == 0


def test_context_fit_skips_small_endpoints_and_refuses_when_none_fits() -> None:
    picker, states, counters = make_picker(n=3, weights=(1, 0, 0, 0, 0, 0))
    picker.pool.lengths[:] = [1000, 4000, 2000]
    small = chat("x" * 400, "y", max_tokens=100)  # ~100 + 100 tokens: fits all
    found = ask(picker, small)
    assert found.tokens == 0  # the body's size fits the smallest: nothing counted
    assert {picker.choose(found, 1.0, t) for t in range(3)} == {0, 1, 2}
    mid = chat("x" * 8000, "y", max_tokens=500)  # 2000 + 500 tokens: only the 4000
    found = ask(picker, mid)
    assert found.exact and found.tokens == 2000 and found.max_tokens == 500
    assert {picker.choose(found, 1.0, t) for t in range(3)} == {1}
    assert counters.endpoint("chat", states[0].backend).context_skips == 3
    with pytest.raises(ContextTooLong) as caught:
        ask(picker, chat("x" * 16000, "y", max_tokens=100))
    err = caught.value
    assert (err.prompt_tokens, err.max_tokens, err.max_model_len) == (4000, 100, 4000)
    assert "4100 tokens" in err.message and "max_model_len" in err.message
    assert err.status == 400 and err.code == "context_length_exceeded"
    assert counters.route("chat").context_refusals == 1


def test_unknown_context_lengths_check_nothing_and_the_policy_length_wins() -> None:
    picker, _, _ = make_picker(n=2, weights=(1, 0, 0, 0, 0, 0))
    picker.pool.lengths[:] = [1000, 0]
    assert ask(picker, chat("x" * 40000, "y")).tokens == 0
    fixed, _, _ = make_picker(n=2, weights=(1, 0, 0, 0, 0, 0), max_model_len=100)
    with pytest.raises(ContextTooLong):
        ask(fixed, chat("x" * 4000, "y"))
    off, _, _ = make_picker(n=2, weights=(1, 0, 0, 0, 0, 0), max_model_len=100, fit=False)
    assert ask(off, chat("x" * 4000, "y")).tokens == 0


def test_only_what_the_weights_use_is_computed() -> None:
    picker, _, _ = make_picker(weights=(1, 1, 0, 0, 0, 0), fit=False)
    found = picker.ask(chat(SYSTEM_A, "u"), None, {b"x-session-id": b"s"})
    assert (found.hashes, found.session, found.tokens) == ([], b"", 0)


# LoRA adapter affinity ---------------------------------------------------------------


def lora_picker(n: int = 4) -> tuple[Picker, list[EndpointState], PickerCounters]:
    return make_picker(n=n, weights=(1, 0, 0, 0, 0, 2), adapter="sql", fit=False)


def test_lora_scores_running_then_free_then_waiting_then_swap() -> None:
    picker, states, counters = lora_picker()
    set_lora(states[0], ("law", "med"), ("sql",), 2)  # queued for a slot: 0.25
    set_lora(states[1], ("law", "med"), (), 2)  # full, absent: a swap, 0
    set_lora(states[2], ("sql",), (), 2)  # running: 1
    set_lora(states[3], ("law",), (), 2)  # a slot free: 0.5
    rows = picker.explain(ask(picker, chat(SYSTEM_A, "q")), 1.0)
    assert [row["scores"]["lora"] for row in rows] == [0.5, 0.0, 2.0, 1.0]
    assert [row["lora"]["adapter"] for row in rows] == ["waiting", "swap", "running", "free"]
    assert picker.choose(ask(picker, chat(SYSTEM_A, "q")), 1.0, 0) == 2
    assert counters.series[("chat", states[2].backend)].lora == [1, 0, 0, 0]
    assert counters.series[("chat", states[2].backend)].picks[WINNERS.index("lora")] == 1
    # The runner: busier by two requests, it still wins (2 * 1 + 1/3 > 2 * 0.5 + 1).
    states[2].in_flight = 2
    assert picker.choose(ask(picker, chat(SYSTEM_A, "q")), 1.0, 0) == 2
    # Past spread_above, the adapter's endpoint loses its affinity to the load scorer.
    states[2].in_flight = 20
    assert picker.choose(ask(picker, chat(SYSTEM_A, "q")), 1.0, 0) == 3
    assert counters.series[("chat", states[3].backend)].lora == [0, 1, 0, 0]


def test_waiting_adapters_take_the_free_slots_first() -> None:
    picker, states, _ = lora_picker(2)
    set_lora(states[0], ("law",), ("med",), 2)  # law running, med waiting: both slots
    set_lora(states[1], (), (), 0)  # no report (no LoRA request yet, or stale): free
    rows = picker.explain(ask(picker, chat(SYSTEM_A, "q")), 1.0)
    assert [row["lora"]["adapter"] for row in rows] == ["swap", "free"]
    assert not states[0].lora_free and states[1].lora_free


def test_without_a_lora_weight_nothing_about_adapters_is_read_or_shown() -> None:
    picker, states, counters = make_picker(weights=(1, 0, 0, 0, 0, 0), adapter="sql")
    set_lora(states[0], ("law",), (), 1)
    rows = picker.explain(ask(picker, chat(SYSTEM_A, "q")), 1.0)
    assert "lora" not in rows[0]["scores"] and "lora" not in rows[0]
    picker.choose(ask(picker, chat(SYSTEM_A, "q")), 1.0, 0)
    assert all(s.lora == [0, 0, 0, 0] for s in counters.series.values())
    assert "lora" not in picker.describe()


def test_lora_picks_are_exported() -> None:
    picker, states, counters = lora_picker(2)
    set_lora(states[0], ("sql",), (), 4)
    set_lora(states[1], ("a", "b", "c", "d"), (), 4)
    for _ in range(3):
        picker.choose(ask(picker, chat(SYSTEM_A, "q")), 1.0, 0)
    families = {f.name: f for f in picker_families(counters)}  # type: ignore[attr-defined]
    samples = [(s.labels, s.value) for s in families["switchyard_picker_lora"].samples]
    assert samples == [({"route": "chat", "backend": states[0].backend, "result": "running"}, 3.0)]
    wins = [s for s in families["switchyard_picker_picks"].samples if s.value]
    assert [s.labels["scorer"] for s in wins] == ["lora"]
