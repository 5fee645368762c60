"""Token metrics of LLM routes, measured through the real gateway and simulator."""

from __future__ import annotations

from collections.abc import Callable

import openai

from tests.procs import GatewayProc, Simulator


def policy(sim: Simulator) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants: [{{name: main, endpoints: ["{sim.url}"]}}]
"""


def test_stream_without_usage_request_still_counts_tokens(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(policy(sims[0]))
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "one two three"}],
                stream=True,
                extra_headers={"x-sim-tokens": "6"},
            )
        )
        # The client did not ask for usage, so it gets none, though the gateway asked.
        assert all(c.usage is None for c in chunks)
        assert all(c.choices for c in chunks)
        plain = client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "a b"}],
            extra_headers={"x-sim-tokens": "4"},
        )
        assert plain.usage is not None
    labels = {"route": "chat", "variant": "main"}
    assert gw.metric("switchyard_completion_tokens_total", **labels) == 6 + 4
    assert gw.metric("switchyard_prompt_tokens_total", **labels) > 0
    assert gw.metric("switchyard_time_to_first_token_seconds_count", **labels) == 1
    # role chunk + 6 content chunks + finish chunk (+ usage) + [DONE]: gaps after the first
    assert gw.metric("switchyard_inter_token_latency_seconds_count", **labels) >= 1


def test_stream_with_usage_request_keeps_it(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(policy(sims[0]))
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-sim-tokens": "3"},
            )
        )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert gw.metric("switchyard_completion_tokens_total", route="chat") == 3
