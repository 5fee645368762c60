"""The real gateway in front of a real vLLM server (CPU, tiny random Llama).

The model's weights are random, so its text is arbitrary: every assertion is about the
protocol (objects, finish reasons, SSE framing, status codes, headers) and counts
(tokens from `usage`, requests per variant), never about what the text says.
`ignore_eos` (a vLLM sampling parameter the gateway relays untouched) makes every
answer exactly `max_tokens` long, so token counts are exact.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import openai
import pytest

from tests.backends.vllm.vllm_proc import MAX_MODEL_LEN, SERVED_MODEL, VllmServer
from tests.procs import GatewayProc, Simulator

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
EXACT: dict[str, Any] = {"ignore_eos": True}


def policy(
    vllm: VllmServer,
    sim: Simulator,
    weights: tuple[int, int] = (100, 0),
    extra: str = "",
) -> str:
    """Route `chat`: champion on vLLM (its served name differs, so `model` is rewritten),
    challenger on the simulator, which is also the fallback when vLLM fails."""
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
protocol: openai
variants:
  - name: champion
    weight: {weights[0]}
    endpoints: [{vllm.url}]
    model: {SERVED_MODEL}
  - name: challenger
    weight: {weights[1]}
    endpoints: [{sim.url}]
fallback: [challenger]
# budget 1.0: the few requests of a test must never find the retry budget spent
retries: {{attempts: 2, budget: 1.0, on: [connect-error, reset, 502, 503]}}
{extra}"""


def served_by_vllm(raw_headers: Mapping[str, str], body: Any, vllm: VllmServer) -> bool:
    fingerprint = getattr(body, "system_fingerprint", None) or ""
    return raw_headers["x-switchyard-backend"] == vllm.hostport and fingerprint.startswith("vllm-")


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def sim(sims: tuple[Simulator, Simulator]) -> Simulator:
    return sims[0]


@pytest.fixture
def gw(gateway: Callable[..., GatewayProc], vllm: VllmServer, sim: Simulator) -> GatewayProc:
    return gateway(policy(vllm, sim))


@pytest.fixture
def oa(gw: GatewayProc) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_sync_chat_through_gateway_matches_direct_counts(
    oa: openai.OpenAI, vllm: VllmServer
) -> None:
    raw = oa.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=8, extra_body=EXACT
    )
    done = raw.parse()
    assert raw.headers["x-switchyard-route"] == "chat"
    assert raw.headers["x-switchyard-variant"] == "champion"
    assert served_by_vllm(raw.headers, done, vllm)
    assert done.object == "chat.completion"
    assert done.model == SERVED_MODEL  # the body is vLLM's, relayed as it came
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 8
    with openai.OpenAI(base_url=f"{vllm.url}/v1", api_key="unused", max_retries=0) as direct:
        same = direct.chat.completions.create(
            model=SERVED_MODEL, messages=MESSAGES, max_tokens=8, extra_body=EXACT
        )
    assert same.usage is not None
    assert done.usage.prompt_tokens == same.usage.prompt_tokens


def test_sync_chat_stream_with_usage(oa: openai.OpenAI, vllm: VllmServer) -> None:
    stream = oa.chat.completions.create(
        model="chat",
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=EXACT,
    )
    chunks = list(stream)
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    # vLLM opens with a role event, then sends one event per generated token at most
    # (outputs that queue up while the server is busy are merged into one event).
    assert chunks[0].choices[0].delta.role == "assistant"
    token_events = [c for c in chunks[1:] if c.choices]
    assert 1 <= len(token_events) <= 12


def test_completions_plain_and_stream(oa: openai.OpenAI) -> None:
    plain = oa.completions.create(
        model="chat", prompt="say something", max_tokens=5, extra_body=EXACT
    )
    assert plain.object == "text_completion"
    assert plain.usage is not None and plain.usage.completion_tokens == 5
    events = list(
        oa.completions.create(
            model="chat",
            prompt="say something",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=EXACT,
        )
    )
    assert [
        e.choices[0].finish_reason for e in events if e.choices and e.choices[0].finish_reason
    ] == ["length"]
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == 5


async def test_async_client_concurrent_streams(gw: GatewayProc) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key="unused", max_retries=0
    ) as client:

        async def one_stream(n: int) -> int:
            stream = await client.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": f"request {n}"}],
                max_tokens=6 + n,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=EXACT,
            )
            usage = None
            async for chunk in stream:
                usage = chunk.usage or usage
            assert usage is not None
            return usage.completion_tokens

        # vLLM batches these; each stream must still get exactly its own token count.
        counts = await asyncio.gather(*(one_stream(n) for n in range(4)))
        assert counts == [6, 7, 8, 9]
        plain = await client.chat.completions.create(
            model="chat", messages=MESSAGES, max_tokens=3, extra_body=EXACT
        )
        assert plain.usage is not None and plain.usage.completion_tokens == 3


def test_canary_split_champion_vllm_challenger_simulator(
    gateway: Callable[..., GatewayProc], vllm: VllmServer, sim: Simulator
) -> None:
    gw = gateway(policy(vllm, sim, weights=(70, 30)))
    seen: Counter[str] = Counter()
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
        for _ in range(200):
            raw = client.chat.completions.with_raw_response.create(
                model="chat", messages=MESSAGES, max_tokens=2, extra_body=EXACT
            )
            body = raw.parse()
            variant = raw.headers["x-switchyard-variant"]
            seen[variant] += 1
            if variant == "champion":
                assert served_by_vllm(raw.headers, body, vllm)
            else:
                assert raw.headers["x-switchyard-backend"] == sim.url.removeprefix("http://")
                assert not (body.system_fingerprint or "").startswith("vllm-")
    # 70/30 over 200: challenger expected 60, sd ~6.5; 4 sd bounds.
    assert 34 <= seen["challenger"] <= 86, seen
    assert seen["champion"] + seen["challenger"] == 200
    for variant, count in seen.items():
        assert gw.metric("switchyard_requests_total", route="chat", variant=variant) == count
    print(f"\ncanary split observed (70/30 policy, 200 requests): {dict(seen)}")


def test_sticky_by_user_body_field(
    gateway: Callable[..., GatewayProc], vllm: VllmServer, sim: Simulator
) -> None:
    gw = gateway(policy(vllm, sim, weights=(50, 50), extra='sticky: {hash_on: "body:user"}\n'))
    by_user: dict[str, set[str]] = {}
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
        for i in range(16):
            user = f"user-{i}"
            for _ in range(4):
                raw = client.chat.completions.with_raw_response.create(
                    model="chat", messages=MESSAGES, max_tokens=2, user=user
                )
                by_user.setdefault(user, set()).add(raw.headers["x-switchyard-variant"])
    moved = {u: v for u, v in by_user.items() if len(v) != 1}
    assert not moved, f"users moved between variants: {moved}"
    # 16 users on a 50/50 line all landing on one side has probability 2**-15.
    assert {next(iter(v)) for v in by_user.values()} == {"champion", "challenger"}


def long_generation() -> dict[str, Any]:
    """A request that vLLM cannot finish within any wait of these tests.

    Whatever a test observes mid-stream (a cancel, a crash) must still be under way when
    it acts, on a shared 2-core machine where vLLM's API server, the gateway and the test
    can each be starved for seconds while vLLM's engine (another process) runs on. One
    answer is at most ~480 tokens here (the model's 512 positions), so the work comes
    from `n` parallel answers: the CPU engine runs 128 at a time (its max_num_seqs) and
    queues the rest, so 1024 answers are 8 rounds of ~480 steps, about 75 s on this
    machine (64 answers took 3-5 s and were, now and then, all done before a cancel
    landed). With `ignore_eos` an uncancelled request adds exactly n * max_tokens to
    vLLM's generated-token counter.
    """
    return {"max_tokens": MAX_MODEL_LEN - 32, "n": 1024, **EXACT}


# An SSE event of a generated token (vLLM's opening event starts with the role instead).
# Its text may be "" while the detokenizer holds back an incomplete UTF-8 sequence.
TOKEN_EVENT = re.compile(r'"delta":\s*\{\s*"content"')


def first_token(lines: Iterator[str]) -> str:
    """Read up to the first generated token; the response's id (vLLM's request id)."""
    for line in lines:
        if line.startswith("data: ") and TOKEN_EVENT.search(line):
            chunk_id: str = json.loads(line.removeprefix("data: "))["id"]
            return chunk_id
    raise AssertionError("the stream ended before any token")


def log_since(server: VllmServer, offset: int) -> str:
    """What the server logged after the first `offset` bytes of its log."""
    with server.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def idle(server: VllmServer) -> bool:
    """Nothing running or queued in vLLM's engine (the parallel answers of `n` queue)."""
    busy = server.metric("vllm:num_requests_running") + server.metric("vllm:num_requests_waiting")
    return busy == 0


def test_client_disconnect_cancels_generation_on_vllm(gw: GatewayProc, vllm: VllmServer) -> None:
    body = {"model": "chat", "messages": MESSAGES, "stream": True, **long_generation()}
    full = body["n"] * body["max_tokens"]
    tokens_before = vllm.metric("vllm:generation_tokens_total")
    log_offset = vllm.log_path.stat().st_size
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["x-switchyard-variant"] == "champion"
        request_id = first_token(r.iter_lines())
    # Leaving the block closed the client's connection mid-stream; the gateway must
    # close its upstream connection, which is how vLLM learns to abort the request. vLLM
    # logs the abort of this very request (the session's server runs with
    # --enable-log-requests); a request that runs to its end never logs it, however
    # long this waits, so the check cannot pass without the cancel. The generation
    # would take over a minute, so the abort always lands first.
    aborted = f"Request {request_id} aborted."
    assert wait_until(lambda: aborted in log_since(vllm, log_offset), timeout=30), (
        f"vLLM never logged {aborted!r}: the gateway did not cancel the upstream request "
        f"({vllm.metric('vllm:num_requests_running'):.0f} answers still running, "
        f"{vllm.metric('vllm:num_requests_waiting'):.0f} queued)"
    )
    # And the engine stopped: nothing left running or queued, short of every token.
    assert wait_until(lambda: idle(vllm), timeout=10)
    generated = vllm.metric("vllm:generation_tokens_total") - tokens_before
    assert generated < full, f"vLLM generated {generated:.0f} of {full} tokens: not cancelled"
    assert wait_until(
        lambda: (
            gw.metric("switchyard_gateway_errors_total", route="chat", code="client_closed") >= 1
        ),
        timeout=5,
    )
    print(f"\ncancelled: vLLM generated {generated:.0f} of {full} tokens")


def test_upstream_4xx_passes_through_untouched(
    gateway: Callable[..., GatewayProc], vllm: VllmServer, sim: Simulator
) -> None:
    gw = gateway(
        policy(vllm, sim),
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: wrong-name
variants:
  - name: only
    endpoints: [{vllm.url}]
    model: not-served-here
""",
    )
    too_long = {"model": "chat", "messages": MESSAGES, "max_tokens": MAX_MODEL_LEN * 2}
    via = httpx.post(f"{gw.url}/v1/chat/completions", json=too_long, timeout=30)
    direct = httpx.post(
        f"{vllm.url}/v1/chat/completions", json={**too_long, "model": SERVED_MODEL}, timeout=30
    )
    assert direct.status_code == 400
    assert via.status_code == 400
    assert via.headers["x-switchyard-variant"] == "champion"  # no fallback on a client error
    assert via.headers["content-type"] == direct.headers["content-type"]
    assert via.content == direct.content
    with (
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as info,
    ):
        client.chat.completions.create(
            model="chat", messages=MESSAGES, max_tokens=MAX_MODEL_LEN * 2
        )
    assert isinstance(info.value.body, dict) and info.value.body.get("param") == "max_tokens"

    missing = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "wrong-name", "messages": MESSAGES},
        timeout=30,
    )
    assert missing.status_code == 404
    assert "not-served-here" in missing.json()["error"]["message"]  # vLLM's words, not ours


def test_vllm_killed_mid_stream_then_fallback_to_simulator(
    gateway: Callable[..., GatewayProc], vllm: VllmServer, sim: Simulator
) -> None:
    # Last in the file: it kills the shared server (the `vllm` fixture restarts it for
    # any test that runs after, at the price of another start-up).
    gw = gateway(policy(vllm, sim))
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="chat", messages=MESSAGES, stream=True, extra_body=long_generation()
        )
        got: list[Any] = []

        def consume() -> None:
            for chunk in stream:
                got.append(chunk)
                if len(got) == 2:
                    vllm.kill()  # the backend dies after the first bytes reached us

        # Bytes already reached the client, so no retry is possible: the stream must end
        # in an error, never in a clean finish.
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            consume()
        assert not any(c.choices and c.choices[0].finish_reason for c in got)

        # New requests find vLLM gone: the retry goes to the fallback variant.
        for _ in range(5):
            raw = client.chat.completions.with_raw_response.create(
                model="chat", messages=MESSAGES, max_tokens=2
            )
            assert raw.http_response.status_code == 200
            assert raw.headers["x-switchyard-variant"] == "challenger"
            assert raw.headers["x-switchyard-backend"] == sim.url.removeprefix("http://")
    assert gw.metric("switchyard_fallbacks_total", route="chat") >= 1
    assert gw.metric("switchyard_gateway_errors_total", route="chat", code="stream_cut") >= 1
