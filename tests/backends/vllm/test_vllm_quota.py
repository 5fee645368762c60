"""Spend on a real vLLM: the cost the gateway charges a key is the usage vLLM reported
times the keys file's prices, to the picodollar, whole answers and streams alike.

`ignore_eos` makes every answer exactly `max_tokens` long; the prompt's tokens are
whatever vLLM's tokenizer counts, read from the usage it reports (for the stream whose
client did not ask for usage, from the same prompt answered whole: the gateway asked for
the stream's usage chunk itself and dropped it from the client's stream).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.backends.vllm.vllm_proc import SERVED_MODEL, VllmServer
from tests.procs import GatewayProc

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

KEY = "sk-vllm-cost-0123456789abcdef"
EXACT: dict[str, Any] = {"ignore_eos": True}
# USD per 1M tokens, as picodollars per token: 0.15 -> 150_000, 0.6 -> 600_000.
PROMPT_PRICE, COMPLETION_PRICE = 0.15, 0.6
PROMPT_PICO, COMPLETION_PICO = 150_000, 600_000


def test_cost_is_reported_usage_times_price_streamed_and_not(
    gateway: Callable[..., GatewayProc], vllm: VllmServer, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "keys": [
                    {
                        "name": "priced",
                        "key": KEY,
                        "limits": [{"route": "chat", "tpm": 10**9}],
                    }
                ],
                "prices": [
                    {"route": "chat", "prompt": PROMPT_PRICE, "completion": COMPLETION_PRICE}
                ],
            }
        )
    )
    gw = gateway(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants: [{{name: main, endpoints: [{vllm.url}], model: {SERVED_MODEL}}}]
""",
        extra=("--api-keys", str(keys)),
    )
    seen: list[tuple[int, int]] = []  # (prompt, completion) as vLLM reported them
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key=KEY, max_retries=0) as oa:
        for i, words in enumerate(("hello there", "one two three four five six seven")):
            messages: Any = [{"role": "user", "content": words}]
            whole = oa.chat.completions.create(
                model="chat", messages=messages, max_tokens=6 + i, extra_body=EXACT
            )
            assert whole.usage is not None
            seen.append((whole.usage.prompt_tokens, whole.usage.completion_tokens))
            chunks = list(
                oa.chat.completions.create(
                    model="chat",
                    messages=messages,
                    max_tokens=9 + i,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body=EXACT,
                )
            )
            usage = chunks[-1].usage
            assert usage is not None and usage.completion_tokens == 9 + i
            seen.append((usage.prompt_tokens, usage.completion_tokens))
            # A stream whose client asked for no usage: same prompt, so same prompt count.
            quiet = list(
                oa.chat.completions.create(
                    model="chat", messages=messages, max_tokens=4, stream=True, extra_body=EXACT
                )
            )
            assert all(c.usage is None for c in quiet)
            seen.append((whole.usage.prompt_tokens, 4))
    prompt = sum(p for p, _ in seen)
    completion = sum(c for _, c in seen)
    pico = prompt * PROMPT_PICO + completion * COMPLETION_PICO
    labels = {"key": "priced", "route": "chat", "version": ""}
    assert gw.metric("switchyard_quota_tokens_total", kind="prompt", **labels) == prompt
    assert gw.metric("switchyard_quota_tokens_total", kind="completion", **labels) == completion
    cost = gw.metric("switchyard_quota_cost_usd_total", **labels)
    assert cost == pytest.approx(pico / 1e12, rel=1e-12, abs=0)
    view = httpx.get(f"{gw.admin}/admin/keys/priced", timeout=5).json()
    [usage_here] = view["usage_here_since_start"]
    assert (usage_here["prompt_tokens"], usage_here["completion_tokens"]) == (prompt, completion)
    assert usage_here["requests"] == len(seen)
    assert usage_here["cost_usd"] == pytest.approx(pico / 1e12, rel=1e-12, abs=0)
