"""Quotas and budgets of one gateway (no store: each process holds every limit itself),
through the openai SDK against the simulator, which reports usage: prompt tokens are
the prompt's words, completion tokens `min(--tokens, max_tokens)`.

Every request below asks "one two three" with max_tokens 8 of a simulator answering 8
tokens: the estimate is 13 characters / 4 + 3 = 7 prompt tokens + 8 = 15, the usage
3 + 8 = 11, so each admitted request is pre-charged 15 and settles at 11.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.procs import GatewayProc, Simulator

KEY_A = "sk-team-a-0123456789abcdef"
KEY_B = "sk-team-b-0123456789abcdef"
MESSAGES: Any = [{"role": "user", "content": "one two three"}]
PROMPT, COMPLETION, ESTIMATE = 3, 8, 15


def early_in_the_window(window: float = 60.0, needed: float = 20.0) -> None:
    """Wait, if need be, until `needed` seconds are left of the current window: limit
    windows are aligned to the epoch, so a test that crossed a boundary would see its
    counts start again from zero halfway through."""
    left = window - time.time() % window
    if left < needed:
        time.sleep(left + 0.2)


def policy(sim: Simulator, route: str = "chat") -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants: [{{name: main, endpoints: ["{sim.url}"]}}]
"""


def keyed_gateway(
    gateway: Callable[..., GatewayProc], sim: Simulator, tmp_path: Path, keys: dict[str, Any]
) -> GatewayProc:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(keys))
    return gateway(policy(sim), policy(sim, "other"), extra=("--api-keys", str(path)))


def client(gw: GatewayProc, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=10)


def ask(c: openai.OpenAI, *, stream: bool = False, route: str = "chat") -> int:
    """One request; the completion tokens the client saw (0 when streamed)."""
    if stream:
        events = c.chat.completions.create(
            model=route, messages=MESSAGES, max_tokens=8, stream=True
        )
        chunks = list(events)
        assert all(chunk.usage is None for chunk in chunks)  # the gateway's chunk stripped
        return 0
    reply = c.chat.completions.create(model=route, messages=MESSAGES, max_tokens=8)
    assert reply.usage is not None and reply.usage.prompt_tokens == PROMPT
    return reply.usage.completion_tokens


def admitted_until_refused(c: openai.OpenAI, stream: bool = False, limit: int = 50) -> int:
    for n in range(limit):
        try:
            ask(c, stream=stream)
        except openai.RateLimitError:
            return n
    raise AssertionError(f"no 429 in {limit} requests")


def admin_key(gw: GatewayProc, name: str) -> dict[str, Any]:
    reply = httpx.get(f"{gw.admin}/admin/keys/{name}", timeout=5)
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    return found


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_tpm_limit_admits_exactly_what_the_reconciled_usage_allows(
    gateway: Callable[..., GatewayProc],
    sims: tuple[Simulator, Simulator],
    tmp_path: Path,
    stream: bool,
) -> None:
    gw = keyed_gateway(
        gateway,
        sims[0],
        tmp_path,
        {
            "keys": [
                {
                    "name": "team-a",
                    "key": KEY_A,
                    "tenant": "acme",
                    "limits": [{"route": "chat", "tpm": 100}],
                }
            ]
        },
    )
    early_in_the_window()
    with client(gw) as c:
        # Admitted while what was settled (11 each) plus this estimate (15) fits in 100:
        # 8 requests (88); the 9th would need 103. Without the reconcile from the usage
        # (streamed: from the usage chunk the gateway asked for) it would be 6.
        assert admitted_until_refused(c, stream) == 8
        with pytest.raises(openai.RateLimitError) as limited:
            ask(c, stream=stream)
        reply = limited.value.response
        error = reply.json()["error"]
        assert error["code"] == "tpm_limit_exceeded" and error["type"] == "rate_limit_error"
        assert "API key 'team-a' is over its tpm limit of 100 tokens per 60s" in error["message"]
        assert KEY_A not in reply.text
        assert 1 <= int(reply.headers["retry-after"]) <= 60
        ask(c, stream=stream, route="other")  # the limit is the chat route's only
    labels = {"key": "team-a", "tenant": "acme", "route": "chat"}
    assert gw.metric("switchyard_quota_tokens_total", kind="prompt", **labels) == 8 * PROMPT
    assert gw.metric("switchyard_quota_tokens_total", kind="completion", **labels) == 64
    assert gw.metric("switchyard_quota_requests_total", result="admitted", **labels) == 8
    assert gw.metric("switchyard_quota_requests_total", limit="tpm", **labels) == 2
    [tpm] = admin_key(gw, "team-a")["limits"]
    assert (tpm["limit"], tpm["used"], tpm["remaining"], tpm["max"]) == ("tpm", 88, 12, 100)
    assert KEY_A not in gw.metrics() + gw.proc.output()


def test_rpm_and_tenant_limits_and_a_budget_at_the_price_of_the_version(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator], tmp_path: Path
) -> None:
    gw = keyed_gateway(
        gateway,
        sims[0],
        tmp_path,
        {
            "keys": [
                {
                    "name": "team-a",
                    "key": KEY_A,
                    "tenant": "acme",
                    "priority": "high",
                    "limits": [{"route": "*", "budget": {"day": 0.0002}}],
                },
                {"name": "team-b", "key": KEY_B, "tenant": "acme"},
            ],
            "tenants": {"acme": {"limits": [{"route": "other", "rpm": 3}]}},
            # USD per 1M tokens: a request costs 3 x 2 + 8 x 4 = 38 microdollars (its
            # estimate 7 x 2 + 8 x 4 = 46).
            "prices": [{"route": "chat", "prompt": 2, "completion": 4}],
        },
    )
    early_in_the_window()
    with client(gw) as a, client(gw, KEY_B) as b:
        # The tenant's 3 requests per minute on "other", whichever of its keys asks.
        ask(a, route="other")
        ask(b, route="other")
        ask(b, route="other")
        with pytest.raises(openai.RateLimitError) as limited:
            ask(a, route="other")
        error = limited.value.response.json()["error"]
        assert error["code"] == "rpm_limit_exceeded"
        assert (
            "tenant 'acme' (of API key 'team-a') is over its rpm limit of 3" in (error["message"])
        )
        # team-a's $0.0002 a day: admitted while 38k + 46 <= 200 microdollars: 5.
        assert admitted_until_refused(a) == 5
        with pytest.raises(openai.RateLimitError) as limited:
            ask(a)
        reply = limited.value.response
        assert reply.json()["error"]["code"] == "budget_exceeded"
        assert "budget_day limit of $0.0002 per UTC day" in reply.json()["error"]["message"]
        assert int(reply.headers["retry-after"]) <= 86400
        ask(b)  # team-b has no budget
    cost = gw.metric("switchyard_quota_cost_usd_total", key="team-a", route="chat")
    assert cost == pytest.approx(5 * 38e-6, rel=1e-12)
    remaining = gw.metric(
        "switchyard_quota_budget_remaining_usd", key="team-a", period="day", route="*"
    )
    assert remaining == pytest.approx(200e-6 - 5 * 38e-6, rel=1e-9)
    view = admin_key(gw, "team-a")
    assert (view["tenant"], view["priority"]) == ("acme", 2)
    budget = next(m for m in view["limits"] if m["limit"] == "budget_day")
    assert budget["used"] == pytest.approx(190e-6) and budget["unit"] == "USD"
    listing = httpx.get(f"{gw.admin}/admin/keys", timeout=5).json()
    assert [k["name"] for k in listing["keys"]] == ["team-a", "team-b"]
    assert listing["store"]["kind"] == "none"
    assert httpx.get(f"{gw.admin}/admin/keys/nobody", timeout=5).status_code == 404
