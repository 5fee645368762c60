"""The lora scorer and gateway-issued session tokens in real gateway processes, against
real simulators: the simulators report vLLM's `vllm:lora_requests_info` for the adapters
of the requests they have not answered yet (`--max-loras 1`), and two gateways that
share a fleet secret keep a conversation on its variant from its token alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.dataplane.feedback.ids import FeedbackIds
from gateway.dataplane.session_tokens import mint
from tests.procs import GatewayProc, Simulator, poll, start_gateway, start_simulator

SECRET = "a fleet secret the two replicas share"
# All of them on one variant by chance: 2 in 2**16.
CONVERSATIONS = 16
LORA = ["--max-loras", "1", "--lora-module", "sql", "--lora-module", "law"]


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Simulator]]:
    started: dict[str, Simulator] = {}
    try:
        started["a"] = start_simulator("lora-a", *LORA)
        started["b"] = start_simulator("lora-b", *LORA)
        started["c"] = start_simulator("canary-c")
        yield started
    finally:
        for sim in started.values():
            sim.proc.stop()


@pytest.fixture(scope="module")
def gws(
    sims: dict[str, Simulator], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProc, GatewayProc]]:
    folder: Path = tmp_path_factory.mktemp("lora-policies")
    a, b, c = (sims[k].url for k in ("a", "b", "c"))
    adapters = "".join(
        f"""---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - {{name: pool, model: {adapter}, endpoints: ["{a}", "{b}"], load_metrics: vllm}}
picker: {{scorers: {{lora: 2, queue: 1}}}}
"""
        for route, adapter in (("ask-sql", "sql"), ("ask-law", "law"))
    )
    (folder / "p.yaml").write_text(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: conv
variants:
  - {{name: stable, weight: 50, endpoints: ["{a}", "{b}"]}}
  - {{name: canary, weight: 50, endpoints: ["{c}"]}}
picker:
  scorers: {{session: 3, queue: 1}}
  session: {{key: issued, ttl: 60s}}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: conv-labeled
variants:
  - {{name: stable, endpoints: ["{a}", "{b}"]}}
picker:
  scorers: {{session: 3, queue: 1}}
  session: {{key: issued, ttl: 60s}}
ground_truth: {{prediction: model, classes: [yes, no]}}  # a short field to capture
"""
        + adapters
    )
    env = {"SWITCHYARD_FLEET_SECRET": SECRET}
    one = start_gateway(folder, env=env)
    try:
        two = start_gateway(folder, env=env)
    except BaseException:
        one.proc.stop()
        raise
    yield one, two
    one.proc.stop()
    two.proc.stop()


def chat(
    gw: GatewayProc, route: str, content: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {"model": route, "messages": [{"role": "user", "content": content}]}
    response = httpx.post(
        f"{gw.url}/v1/chat/completions", json=body, headers=headers or {}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def hold(sim: Simulator, model: str, count: int, seconds: float) -> list[threading.Thread]:
    """`count` requests for `model` sent to `sim` directly (other clients of the backend),
    answered after `seconds`: the simulator reports them running meanwhile."""

    def one() -> None:
        httpx.post(
            f"{sim.url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hold"}]},
            headers={"x-sim-latency-ms": str(int(seconds * 1000))},
            timeout=seconds + 30,
        )

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_adapter_affinity_beats_load_and_avoids_a_swap(
    gws: tuple[GatewayProc, GatewayProc], sims: dict[str, Simulator]
) -> None:
    gw = gws[0]
    a, b = (sims[k].url.removeprefix("http://") for k in ("a", "b"))
    holders = hold(sims["a"], "sql", 2, 15.0)  # lora-a runs adapter sql; its one slot is full
    try:
        poll(
            "the gateway reading lora-a's two running requests (and its LoRA report)",
            lambda: gw.metric("switchyard_backend_running", backend=a) >= 2,
            timeout=10,
        )
        # sql: lora-a runs it (2 x 1 + 1/3) though it is the busier (idle lora-b: 2 x 0.5 + 1).
        served = {chat(gw, "ask-sql", f"q{i}").headers["x-switchyard-backend"] for i in range(6)}
        assert served == {a}
        assert gw.metric("switchyard_picker_lora_total", backend=a, result="running") == 6
        assert gw.metric("switchyard_picker_picks_total", route="ask-sql", scorer="lora") == 6
        # lora-b becomes the busier with three requests of the base model (no adapter).
        holders += hold(sims["b"], "base", 3, 10.0)
        poll(
            "the gateway reading lora-b's three running requests",
            lambda: gw.metric("switchyard_backend_running", backend=b) >= 3,
            timeout=10,
        )
        # law: lora-a would have to swap sql out (0 + 1/1); lora-b has its slot free
        # (2 x 0.5 + 1/2): the busier lora-b takes it.
        served = {chat(gw, "ask-law", f"q{i}").headers["x-switchyard-backend"] for i in range(6)}
        assert served == {b}
        assert gw.metric("switchyard_picker_lora_total", backend=b, result="free") == 6
    finally:
        for thread in holders:
            thread.join(timeout=40)


def test_an_issued_session_keeps_its_variant_and_endpoint_on_any_replica(
    gws: tuple[GatewayProc, GatewayProc],
) -> None:
    tokens: dict[str, str] = {}
    homes: dict[str, set[tuple[int, str, str]]] = {}
    for n in range(CONVERSATIONS):  # about half to the canary by the weighted draw
        first = chat(gws[0], "conv", "hello")
        token = first.headers["x-switchyard-session"]
        assert token.startswith("ss1.")
        tokens[f"c{n}"] = token
        homes[f"c{n}"] = {
            (0, first.headers["x-switchyard-variant"], first.headers["x-switchyard-backend"])
        }
    for turn in range(4):
        for name, token in tokens.items():
            replica = turn % 2  # the turns alternate between the two replicas
            got = chat(gws[replica], "conv", f"turn {turn}", {"x-switchyard-session": token})
            assert got.headers["x-switchyard-session"] == token  # the token in force
            homes[name].add(
                (replica, got.headers["x-switchyard-variant"], got.headers["x-switchyard-backend"])
            )
    for name, seen in homes.items():
        assert len({variant for _, variant, _ in seen}) == 1, (name, seen)  # one variant
        for replica in (0, 1):  # one endpoint per replica (each holds its session table)
            assert len({(v, e) for r, v, e in seen if r == replica}) == 1, (name, seen)
    variants = {next(iter(seen))[1] for seen in homes.values()}
    assert variants == {"stable", "canary"}, homes  # the draw placed both; tokens held them
    # Per conversation: a miss on each replica's first sight of its token, then hits.
    for result, count in (("miss", 2 * CONVERSATIONS), ("hit", 3 * CONVERSATIONS)):
        got = sum(
            gw.metric("switchyard_picker_sessions_total", route="conv", result=result) for gw in gws
        )
        assert got == count, (result, got)


def test_a_forged_or_foreign_token_starts_a_new_session(
    gws: tuple[GatewayProc, GatewayProc],
) -> None:
    gw = gws[1]
    before = gw.metric("switchyard_picker_sessions_total", route="conv", result="invalid")
    foreign = mint(FeedbackIds(b"the secret of another fleet"), "conv", "canary").decode()
    for bad in (foreign, "ss1.not-a-token.aaaaaaaaaaaaaaaaaaaaaa", "my-own-session-id"):
        got = chat(gw, "conv", "hi", {"x-switchyard-session": bad})
        fresh = got.headers["x-switchyard-session"]
        assert fresh.startswith("ss1.") and fresh != bad
        again = chat(gw, "conv", "hi", {"x-switchyard-session": fresh})
        assert again.headers["x-switchyard-variant"] == got.headers["x-switchyard-variant"]
        assert again.headers["x-switchyard-session"] == fresh
    after = gw.metric("switchyard_picker_sessions_total", route="conv", result="invalid")
    assert after == before + 3
    # Routes without issued sessions never send the header.
    assert "x-switchyard-session" not in chat(gw, "ask-sql", "q").headers


def test_a_captured_prediction_keeps_the_issued_session_header(
    gws: tuple[GatewayProc, GatewayProc],
) -> None:
    """A route with issued sessions and ground truth: the held head gets the
    prediction's id and keeps the session token beside it."""
    got = chat(gws[0], "conv-labeled", "is it?")
    assert got.headers["x-switchyard-session"].startswith("ss1.")
    assert got.headers["x-switchyard-feedback-id"].startswith("fb2.")
    token = {"x-switchyard-session": got.headers["x-switchyard-session"]}
    again = chat(gws[0], "conv-labeled", "and now?", token)
    assert again.headers["x-switchyard-session"] == got.headers["x-switchyard-session"]
