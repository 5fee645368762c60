"""The official `openai` SDK against the real gateway process and real simulators."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.procs import GatewayProc, Simulator, canary_policy

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def gw(gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]) -> GatewayProc:
    a, b = sims
    return gateway(
        canary_policy("chat", a.url, b.url),
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: embed
variants:
  - name: only
    endpoints: [{a.url}]
""",
    )


@pytest.fixture
def oa(gw: GatewayProc) -> Iterator[openai.OpenAI]:
    """The official SDK pointed at the gateway (closed afterwards: no leaked sockets)."""
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_chat_non_stream_with_routing_headers(oa: openai.OpenAI) -> None:
    raw = oa.chat.completions.with_raw_response.create(
        model="chat",
        messages=MESSAGES,
        extra_headers={"x-user-id": "alice"},  # type: ignore[arg-type]
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    assert raw.headers["x-switchyard-route"] == "chat"
    assert raw.headers["x-switchyard-variant"] in {"champion", "challenger"}
    assert raw.headers["x-switchyard-backend"].startswith("127.0.0.1:")
    assert raw.headers["x-request-id"]


def test_chat_stream_relays_every_chunk(oa: openai.OpenAI) -> None:
    stream = oa.chat.completions.create(
        model="chat",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert content
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_completions_embeddings_models(oa: openai.OpenAI) -> None:
    c = oa
    done = c.completions.create(model="chat", prompt="say something", max_tokens=4)
    assert done.object == "text_completion" and done.choices[0].text
    emb = c.embeddings.create(model="embed", input=["one", "two"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    ids = sorted(m.id for m in c.models.list())
    assert ids == ["chat", "embed"]


async def test_async_client_stream_and_plain(gw: GatewayProc) -> None:
    c = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    plain = await c.chat.completions.create(model="chat", messages=MESSAGES)  # type: ignore[arg-type]
    assert plain.choices[0].message.content
    stream = await c.chat.completions.create(model="chat", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    parts = [chunk async for chunk in stream]
    assert any(p.choices and p.choices[0].finish_reason == "stop" for p in parts)
    await c.close()


def test_sticky_users_and_override(oa: openai.OpenAI) -> None:
    c = oa

    def variant(headers: dict[str, str]) -> str:
        raw = c.chat.completions.with_raw_response.create(
            model="chat",
            messages=MESSAGES,
            extra_headers=headers,  # type: ignore[arg-type]
        )
        return raw.headers["x-switchyard-variant"]

    for user in ("alice", "bob", "carol"):
        seen = {variant({"x-user-id": user}) for _ in range(10)}
        assert len(seen) == 1, f"user {user} moved between variants: {seen}"
    assert {variant({"x-cohort": "beta", "x-user-id": "alice"}) for _ in range(5)} == {"challenger"}


def test_weighted_split_reaches_both_variants(gw: GatewayProc, oa: openai.OpenAI) -> None:
    c = oa
    seen: Counter[str] = Counter()
    for _ in range(200):
        raw = c.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)  # type: ignore[arg-type]
        seen[raw.headers["x-switchyard-variant"]] += 1
    # 90/10 over 200: challenger expected 20, sd ~4.2; 4 sd bounds.
    assert 3 <= seen["challenger"] <= 37, seen
    assert (
        gw.metric("switchyard_requests_total", route="chat", variant="challenger")
        == seen["challenger"]
    )


def test_unknown_model_is_openai_404(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oa.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    assert "nope" in str(info.value)
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"messages": []}', 400, "'model' is required"),
        (b"", 400, "empty"),
    ],
)
def test_bad_requests_get_clear_4xx(
    gw: GatewayProc, body: bytes, status: int, fragment: str
) -> None:
    r = httpx.post(
        f"{gw.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    assert fragment in r.json()["error"]["message"]
    assert r.headers["x-request-id"]


def test_oversized_body_and_unknown_path(gw: GatewayProc) -> None:
    big = b'{"model":"chat","pad":"' + b"x" * (17 * 1024 * 1024) + b'"}'
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=big)
    assert r.status_code == 413
    assert "exceeds the limit" in r.json()["error"]["message"]
    r = httpx.get(f"{gw.url}/v9/whatever")  # (/v2 is the KServe v2 front's)
    assert r.status_code == 404 and "no front serves" in r.json()["error"]["message"]
    r = httpx.get(f"{gw.url}/v1/chat/completions")
    assert r.status_code == 405


def test_metrics_exposed(gw: GatewayProc, oa: openai.OpenAI) -> None:
    oa.chat.completions.create(model="chat", messages=MESSAGES)  # type: ignore[arg-type]
    text = gw.metrics()
    for name in (
        "switchyard_requests_total",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_upstream_duration_seconds_bucket",
        "switchyard_gateway_overhead_seconds_bucket",
        "switchyard_backend_in_flight",
        "switchyard_retries_total",
        "switchyard_backend_ejections_total",
        "switchyard_policy_reloads_total",
        "switchyard_policy_info",
    ):
        assert name in text, name
