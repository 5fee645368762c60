"""Quotas and budgets: the keys file's limits and prices, the estimate, the reconcile,
and the lease arithmetic of the fleet's Redis task (without Redis: its plan and how it
applies a reply)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.dataplane.auth import ApiKeys, KeysFileError, parse_file
from gateway.dataplane.http.wire import Request
from gateway.dataplane.quota import CREDIT_SHARE, KeyState, Meter, Quotas, estimate
from gateway.errors import QuotaExceeded, QuotaStoreDown
from gateway.observability.quota_metrics import PICO, QuotaMetrics
from gateway.quota.sync import QuotaSync

KEY_A = "sk-team-a-0123456789abcdef"
KEY_B = "sk-team-b-0123456789abcdef"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "one two three"}]}


def parse(data: dict[str, Any]) -> Any:
    return parse_file(json.dumps(data).encode(), "keys.json")


def error(data: dict[str, Any]) -> str:
    with pytest.raises(KeysFileError) as raised:
        parse(data)
    return str(raised.value)


def key(name: str = "a", **fields: Any) -> dict[str, Any]:
    return {"name": name, "key": KEY_A if name == "a" else KEY_B, **fields}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"keys": [], "quotas": {}}, "keys.json: unknown top-level fields ['quotas']"),
        ({"keys": [], "default_max_tokens": 0}, "'default_max_tokens' must be a positive"),
        ({"keys": [key(tenant="")]}, "key 'a': 'tenant' must be a string of 1-64"),
        ({"keys": [key(priority="urgent")]}, "key 'a': 'priority' must be an integer 0..9"),
        ({"keys": [key(priority=10)]}, "key 'a': 'priority' must be an integer 0..9"),
        ({"keys": [key(limits={"tpm": 5})]}, "key 'a': 'limits' must be a list"),
        ({"keys": [key(limits=[{"tmp": 5}])]}, "key 'a': limits[0]: unknown fields ['tmp']"),
        ({"keys": [key(limits=[{"route": ""}])]}, "key 'a': limits[0].route: must be a route"),
        (
            {"keys": [key(limits=[{"route": "chat"}])]},
            "key 'a': limits[0] (route 'chat'): give at least one of rpm, tpm, budget",
        ),
        (
            {"keys": [key(limits=[{"tpm": 1.5}])]},
            "key 'a': limits[0] (route '*').tpm: must be a positive integer",
        ),
        (
            {"keys": [key(limits=[{"rpm": 0}])]},
            "key 'a': limits[0] (route '*').rpm: must be a positive integer",
        ),
        (
            {"keys": [key(limits=[{"rpm": 5, "window": 0}])]},
            "key 'a': limits[0] (route '*').window: must be a number of seconds",
        ),
        (
            {"keys": [key(limits=[{"budget": {"week": 5}}])]},
            "key 'a': limits[0] (route '*').budget: unknown fields ['week']",
        ),
        (
            {"keys": [key(limits=[{"budget": {"day": -1}}])]},
            "key 'a': limits[0] (route '*').budget.day: must be a USD amount above 0 and "
            "below 1e9, not -1",
        ),
        (
            {"keys": [key(limits=[{"budget": {"month": 1e9}}])]},
            "key 'a': limits[0] (route '*').budget.month: must be a USD amount above 0 and "
            "below 1e9, not 1000000000.0",
        ),
        (
            {"keys": [key(limits=[{"route": "chat", "tpm": 5}, {"route": "chat", "tpm": 9}])]},
            "key 'a': limits[1] (route 'chat'): a second tpm limit on route 'chat'",
        ),
        (
            {"keys": [], "tenants": {"acme": {"limits": [{"rpm": "x"}]}}},
            "tenant 'acme': limits[0] (route '*').rpm: must be a positive integer",
        ),
        (
            {"keys": [], "tenants": {"acme": {"quota": 1}}},
            "tenant 'acme': unknown fields ['quota']",
        ),
        ({"keys": [], "tenants": []}, "'tenants' must be an object"),
        ({"keys": [], "prices": {}}, "'prices' must be a list"),
        (
            {"keys": [], "prices": [{"route": "chat", "prompt": 1}]},
            "prices[0] (route 'chat').completion: must be USD per 1M tokens",
        ),
        (
            {"keys": [], "prices": [{"route": "chat", "prompt": -1, "completion": 1}]},
            "prices[0] (route 'chat').prompt: must be USD per 1M tokens, 0 or more",
        ),
        (
            {"keys": [], "prices": [{"route": "chat", "prompt": 1e-7, "completion": 1}]},
            "prices[0] (route 'chat').prompt: at most 6 decimals",
        ),
        (
            {"keys": [], "prices": [{"route": "*", "version": "3", "prompt": 1, "completion": 1}]},
            "prices[0].version: the '*' price applies to every version",
        ),
        (
            {
                "keys": [],
                "prices": [
                    {"route": "c", "version": "3", "prompt": 1, "completion": 1},
                    {"route": "c", "version": 3, "prompt": 2, "completion": 2},
                ],
            },
            "prices[1] (route 'c', version '3'): a second price for the same route",
        ),
        ({"keys": [], "prices": [{"route": "c", "prompt": 1, "completion": 1, "x": 1}]}, "['x']"),
    ],
)
def test_every_keys_file_error_names_the_entry_and_the_field(
    data: dict[str, Any], message: str
) -> None:
    assert message in error(data)


def test_old_entries_stay_valid_and_new_fields_land_on_the_key() -> None:
    parsed = parse(
        {
            "keys": [
                {"name": "old", "key": KEY_A, "rate": 2, "burst": 3},
                key("b", tenant="acme", priority="high", limits=[{"route": "chat", "rpm": 5}]),
            ],
            "tenants": {"acme": {"limits": [{"tpm": 1000, "budget": {"day": 2, "month": 30}}]}},
        }
    )
    old, new = sorted(parsed.keys.values(), key=lambda k: k.name == "b")
    assert (old.name, old.tenant, old.priority, old.metered) == ("old", "", 1, False)
    assert (new.tenant, new.priority) == ("acme", 2)
    kinds = sorted((m.owner_kind, m.route, m.limit) for m in new.meters)
    assert kinds == [
        ("key", "chat", 5),
        ("tenant", "*", 1000),
        ("tenant", "*", 2 * PICO),
        ("tenant", "*", 30 * PICO),
    ]
    assert [m.route for m in new.meters_for("other")] == ["*", "*", "*"]
    assert len(new.meters_for("chat")) == 4


def test_prices_per_route_and_version_in_picodollars() -> None:
    parsed = parse(
        {
            "keys": [],
            "prices": [
                {"route": "chat", "prompt": 0.5, "completion": 1.5},
                {"route": "chat", "version": "7", "prompt": 0.0375, "completion": 1},
                {"route": "*", "prompt": 10, "completion": 20},
            ],
        }
    )
    quotas = Quotas(QuotaMetrics())
    quotas.install([], {}, parsed.prices, 256)
    assert (quotas.price("chat", "7").prompt, quotas.price("chat", "7").completion) == (
        37_500,
        1_000_000,
    )
    assert quotas.price("chat", "6").prompt == 500_000  # the route's price
    assert quotas.price("embed", "1").completion == 20_000_000  # the '*' price
    quotas.install([], {}, {}, 256)
    assert quotas.price("chat", "7").prompt == 0  # no table: free


def test_the_estimate_reads_the_prompt_text_and_the_completion_limit() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 40}, {"content": [{"text": "y" * 8}]}]}
    assert estimate(b"/v1/chat/completions", chat, 999, 256) == (12 + 6, 256)
    assert estimate(b"/v1/chat/completions", {**chat, "max_tokens": 9}, 999, 256) == (18, 9)
    both = {**chat, "max_tokens": 9, "max_completion_tokens": 5, "n": 3}
    assert estimate(b"/v1/chat/completions", both, 999, 256) == (18, 15)
    assert estimate(b"/v1/completions", {"prompt": ["abcd", "ef"]}, 999, 7) == (2, 7)
    ollama = {"prompt": "z" * 20, "options": {"num_predict": 33}}
    assert estimate(b"/api/generate", ollama, 999, 7) == (5, 33)
    assert estimate(b"/api/generate", {"prompt": "z", "options": {"num_predict": -1}}, 9, 7) == (
        1,
        7,
    )
    assert estimate(b"/v1/embeddings", {"input": "a" * 12, "max_tokens": 5}, 99, 7) == (3, 0)
    assert estimate(b"/v1/chat/completions", {"other": 1}, 41, 7) == (11, 7)  # bytes / 4
    assert estimate(b"/v2/models/m/infer", None, 400, 7) == (100, 0)


def quotas_with(*meters: Meter, prices: dict[tuple[str, str], Any] | None = None) -> Quotas:
    quotas = Quotas(QuotaMetrics())
    quotas.install([], {m.ident: m for m in meters}, prices or {}, 20)
    return quotas


def keyed(quotas: Quotas, *meters: Meter, tenant: str = "") -> KeyState:
    state = KeyState("team-a", None, 1.0, tenant, 1, meters)
    state.quotas = quotas
    return state


def test_pre_charge_then_reconcile_refunds_or_charges_the_difference() -> None:
    tpm = Meter("key", "team-a", "chat", 1, 100, 60.0)
    parsed = parse({"keys": [], "prices": [{"route": "chat", "prompt": 2, "completion": 4}]})
    day = Meter("key", "team-a", "*", 2, 300 * 1_000_000, 0.0)  # $0.0003
    quotas = quotas_with(tpm, day, prices=parsed.prices)
    state = keyed(quotas, tpm, day)
    body = {**CHAT, "max_tokens": 8}
    charge = quotas.admit(state, "chat", "1", b"/v1/chat/completions", body, 0)
    assert charge is not None
    assert (charge.prompt, charge.completion) == (7, 8)  # 13 chars / 4 + 3, max_tokens
    assert tpm.spent == 15 and day.spent == (7 * 2 + 8 * 4) * 1_000_000
    charge.settle("1", 3, 8, answered=True)  # usage: 3 + 8, a 4-token refund
    assert tpm.spent == 11 and day.spent == 38 * 1_000_000
    charge.settle("1", 300, 300, answered=True)  # settled once only
    assert tpm.spent == 11
    over = quotas.admit(state, "chat", "1", b"/v1/chat/completions", body, 0)
    assert over is not None
    over.settle("1", 20, 30, answered=True)  # more than estimated: the difference is charged
    assert tpm.spent == 61
    failed = quotas.admit(state, "chat", "1", b"/v1/chat/completions", body, 0)
    assert failed is not None
    failed.settle("1", -1, -1, answered=False)  # a backend error: refunded
    assert tpm.spent == 61
    kept = quotas.admit(state, "chat", "1", b"/v1/chat/completions", body, 0)
    assert kept is not None
    kept.settle("1", -1, -1, answered=True)  # answered without usage: the estimate stays
    assert tpm.spent == 76
    series = quotas.metrics.usage[("team-a", "", "chat", "1")]
    assert (series.requests, series.prompt_tokens, series.completion_tokens) == (4, 30, 46)
    assert series.cost == (30 * 2 + 46 * 4) * 1_000_000
    assert quotas.admit(state, "chat", "1", b"/v1/chat/completions", body, 0)  # 76 + 15
    with pytest.raises(QuotaExceeded) as raised:  # 91 + 15 > 100
        quotas.admit(state, "chat", "1", b"/v1/chat/completions", body, 0)
    assert raised.value.status == 429 and raised.value.code == "tpm_limit_exceeded"
    assert "API key 'team-a' is over its tpm limit of 100 tokens per 60s on route 'chat'" in (
        raised.value.message
    )
    assert raised.value.extra.startswith(b"retry-after: ")
    assert quotas.metrics.decisions[("team-a", "", "chat", "limited", "tpm")] == 1


def test_a_tenant_limit_is_shared_by_its_keys_and_named_in_the_refusal() -> None:
    rpm = Meter("tenant", "acme", "*", 0, 3, 60.0)
    quotas = quotas_with(rpm)
    a = keyed(quotas, rpm, tenant="acme")
    b = KeyState("team-b", None, 1.0, "acme", 1, (rpm,))
    b.quotas = quotas
    for state in (a, b, a):
        assert quotas.admit(state, "chat", "", b"/v1/chat/completions", CHAT, 0) is not None
    with pytest.raises(QuotaExceeded) as raised:
        quotas.admit(b, "chat", "", b"/v1/chat/completions", CHAT, 0)
    assert "tenant 'acme' (of API key 'team-b') is over its rpm limit of 3 requests" in (
        raised.value.message
    )
    assert raised.value.code == "rpm_limit_exceeded"


def test_a_reload_keeps_what_each_meter_spent() -> None:
    def keys_json(tpm: int) -> str:
        return json.dumps({"keys": [key(limits=[{"route": "chat", "tpm": tpm}])]})

    parsed = parse_file(keys_json(100).encode(), "k")
    quotas = Quotas(QuotaMetrics())
    quotas.install(list(parsed.keys.values()), parsed.meters, parsed.prices, 20)
    state = next(iter(parsed.keys.values()))
    assert quotas.admit(state, "chat", "", b"/v1/chat/completions", CHAT, 0) is not None
    [counting] = quotas.meters.values()
    again = parse_file(keys_json(50).encode(), "k")
    quotas.install(list(again.keys.values()), again.meters, again.prices, 20)
    [meter] = quotas.meters.values()
    assert meter is counting  # requests in flight settle where they were charged
    assert (meter.limit, meter.spent) == (50, 27)  # 7 prompt + 20 default completion
    assert next(iter(again.keys.values())).meters == (meter,)


def test_api_keys_attach_the_checked_key_to_the_request(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [key(tenant="acme", priority=7)]}))
    keys = ApiKeys(str(path), {})
    headers = [(b"authorization", f"Bearer {KEY_A}".encode())]
    request = Request(b"POST", b"/v1/x", b"", headers, b"{}", True, True, 0.0, fields=dict(headers))
    state = keys.check(request, 1.0)
    assert request.key is state and (state.name, state.tenant, state.priority) == ("a", "acme", 7)


# The fleet's lease arithmetic -------------------------------------------------------


def fleet(*meters: Meter, mode: str = "open", processes: int = 4) -> tuple[Quotas, QuotaSync]:
    quotas = quotas_with(*meters)
    sync = QuotaSync(quotas, quotas.metrics, "redis://127.0.0.1:1/0", mode=mode)
    quotas.processes = processes
    return quotas, sync


def test_a_cold_process_runs_ahead_on_credit_until_its_first_lease() -> None:
    rpm = Meter("key", "team-a", "*", 0, 1000, 60.0)
    quotas, sync = fleet(rpm)
    state = keyed(quotas, rpm)
    credit = 1000 // (CREDIT_SHARE * 4)  # 5: 2% of the limit across 4 processes
    for _ in range(credit):
        quotas.admit(state, "chat", "", b"/", None, 0)
    with pytest.raises(QuotaExceeded) as raised:
        quotas.admit(state, "chat", "", b"/", None, 0)
    assert raised.value.extra == b"retry-after: 1\r\n"  # the pool has more: next refill
    sync._last_plan = rpm.ends_at - 31.0  # a batch a second ago: 5 requests/s
    [item] = sync.plan(rpm.ends_at - 30.0)
    assert (item.used, item.back) == (
        5,
        0,
    ) and item.want == 5 + 2 + 1  # debt, 1 s at 2.5/s, 1 refused
    sync._apply([item], [4, item.want, 1000 - item.want, 5])
    assert quotas.processes == 4 and rpm.granted == item.want and not rpm.dry
    assert rpm.reported == 5 and rpm.fleet_used == 5
    assert quotas.available(rpm) == item.want - 5 + credit


def test_a_dry_pool_stops_credit_and_retry_after_waits_for_the_window() -> None:
    tpm = Meter("key", "team-a", "*", 1, 10_000, 10.0)
    quotas, sync = fleet(tpm)
    state = keyed(quotas, tpm)
    quotas.admit(state, "chat", "", b"/v1/chat/completions", CHAT, 0)  # 27 on credit (50)
    sync._last_plan = tpm.ends_at - 5.2
    [item] = sync.plan(tpm.ends_at - 5.0)
    sync._apply([item], [4, 10, 0, 9990])  # only 10 left in the fleet's pool: dry
    assert tpm.dry and quotas.available(tpm) == 10 - 27
    with pytest.raises(QuotaExceeded) as raised:
        quotas.admit(state, "chat", "", b"/v1/chat/completions", CHAT, 0)
    wait = int(raised.value.extra.split(b": ")[1])
    assert 1 <= wait <= 10


def test_an_idle_process_gives_its_lease_back_and_lets_the_meter_go() -> None:
    tpm = Meter("key", "team-a", "*", 1, 10_000, 60.0)
    quotas, sync = fleet(tpm)
    state = keyed(quotas, tpm)
    quotas.admit(state, "chat", "", b"/v1/chat/completions", CHAT, 0)
    start = tpm.ends_at - 50.0
    sync._last_plan = start - 0.2
    [item] = sync.plan(start)
    sync._apply([item], [4, item.want, 5000, 27])
    held = tpm.granted - tpm.spent
    assert held > 0
    wall = start
    for _ in range(30):  # no more requests: the rate decays to 0, the lease goes back
        wall += 0.2
        items = sync.plan(wall)
        if not items:
            break
        sync._apply(items, [4] + [v for i in items for v in (0, 5000, 27)])
    assert tpm.granted - tpm.spent == 0 and quotas.metrics.returned >= 1
    assert tpm not in quotas.active and not tpm.active


def test_store_down_open_keeps_an_even_share_closed_refuses_503() -> None:
    rpm = Meter("key", "team-a", "*", 0, 100, 60.0)
    quotas, sync = fleet(rpm, processes=4)
    state = keyed(quotas, rpm)
    sync._failed("error", "Connection refused", [])
    assert not quotas.store_up and quotas.metrics.store_up == 0
    admitted = 0
    for _ in range(100):
        try:
            quotas.admit(state, "chat", "", b"/", None, 0)
            admitted += 1
        except QuotaExceeded:
            break
    assert admitted == 25  # 100 / 4 processes: Redis never answered in this window
    heard = Meter("key", "team-a", "*", 0, 100, 60.0)
    quotas, sync = fleet(heard, processes=4)
    state = keyed(quotas, heard)
    heard.roll(time.time())
    heard.active = True
    quotas.active.append(heard)
    [item] = sync.plan(heard.ends_at - 30.0)  # the first batch: reported in any case
    sync._apply([item], [4, 10, 40, 61])  # 10 granted; the pool had 40 left
    sync._failed("error", "Connection reset by peer", [])
    for _ in range(100):
        try:
            quotas.admit(state, "chat", "", b"/", None, 0)
        except QuotaExceeded:
            break
    assert heard.spent == 10 + 40 // 4  # the lease, and a quarter of what was left
    closed_meter = Meter("key", "team-a", "*", 0, 100, 60.0)
    quotas, sync = fleet(closed_meter, mode="closed")
    state = keyed(quotas, closed_meter)
    sync._failed("timeout", "no answer within 0.5s", [])
    with pytest.raises(QuotaStoreDown) as raised:
        quotas.admit(state, "chat", "", b"/", None, 0)
    assert raised.value.status == 503 and raised.value.extra == b"retry-after: 1\r\n"
    assert quotas.metrics.store_errors == {"timeout": 1}


def test_a_busy_process_leases_the_next_window_before_it_begins() -> None:
    tpm = Meter("key", "team-a", "*", 1, 10_000, 10.0)
    quotas, sync = fleet(tpm)
    state = keyed(quotas, tpm)
    tpm.roll(time.time())
    if tpm.ends_at - time.time() < 0.5:  # the admissions below must fall in one window
        time.sleep(tpm.ends_at - time.time())
        tpm.roll(time.time())
    start = tpm.ends_at - 10.0  # this window's start
    tpm.granted = 1000  # a lease already held
    for _ in range(4):
        quotas.admit(state, "chat", "", b"/v1/chat/completions", CHAT, 0)  # 27 each
    sync._last_plan = start + 5.0
    assert [i.role for i in sync.plan(start + 5.2)] == [0]  # mid-window: nothing ahead
    sync._last_plan = start + 9.6
    items = sync.plan(start + 9.8)  # within two batches of the next window
    ahead = next(i for i in items if i.role == 2)
    assert ahead.wid == tpm.wid + 1 and ahead.want == int(108 / 9.8)  # its pace, 1 s
    sync._apply(items, [4] + [v for i in items for v in (i.want, 5000, 0)])
    assert (tpm.next_wid, tpm.next_granted) == (tpm.wid + 1, ahead.want)
    tpm.roll(start + 10.0)
    assert tpm.granted == ahead.want and tpm.spent == 0 and tpm.next_wid == -1
