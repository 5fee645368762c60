"""Scored endpoint picking in the real gateway process, against real simulators:
context fit (lengths read from /v1/models; 400 with the numbers when none fits),
session affinity, and prefix-cache affinity that spreads when the holder is overloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import GatewayProc, Simulator, poll, start_gateway, start_simulator

SYSTEM = "You are the support assistant of a bicycle shop; be brief and friendly. " * 30


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Simulator]]:
    started: dict[str, Simulator] = {}
    try:
        started["small"] = start_simulator("ctx-small", "--max-model-len", "256")
        started["large"] = start_simulator("ctx-large", "--max-model-len", "1024")
        started["a"] = start_simulator("pick-a")
        started["b"] = start_simulator("pick-b")
        yield started
    finally:
        for sim in started.values():
            sim.proc.stop()


@pytest.fixture(scope="module")
def gw(
    sims: dict[str, Simulator], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    folder: Path = tmp_path_factory.mktemp("picker-policies")
    small, large, a, b = (sims[k].url for k in ("small", "large", "a", "b"))
    (folder / "p.yaml").write_text(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: ctx
variants:
  - name: pool
    endpoints: ["{small}", "{large}"]
    picker: {{scorers: {{queue: 1}}}}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: sess
variants:
  - {{name: pool, endpoints: ["{a}", "{b}"]}}
picker:
  scorers: {{session: 3, queue: 1}}
  session: {{key: "header:x-session-id", ttl: 60s}}
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: prefix
variants:
  - {{name: pool, endpoints: ["{a}", "{b}"]}}
picker: {{scorers: {{prefix_cache: 2, queue: 1}}, spread_above: 2}}
"""
    )
    gateway = start_gateway(folder)
    yield gateway
    gateway.proc.stop()


def chat(
    gw: GatewayProc,
    route: str,
    content: str,
    headers: dict[str, str] | None = None,
    system: str | None = None,
    **extra: Any,
) -> httpx.Response:
    messages = [{"role": "user", "content": content}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    body = {"model": route, "messages": messages, **extra}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers or {}, timeout=30)


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-sim-name"]


def chat_requests(sim: Simulator) -> int:
    by_path = sim.stats()["by_path"]
    assert isinstance(by_path, dict)
    return int(by_path.get("/v1/chat/completions", 0))


def test_context_fit_skips_small_endpoints_and_refuses_with_the_numbers(
    gw: GatewayProc, sims: dict[str, Simulator]
) -> None:
    for sim in ("ctx-small", "ctx-large"):
        backend = sims["small" if sim == "ctx-small" else "large"].url.removeprefix("http://")
        poll(
            f"the context length of {sim} read from /v1/models",
            lambda b=backend: gw.metric("switchyard_backend_max_model_len", backend=b) > 0,
            timeout=20,
        )
    assert gw.metric("switchyard_backend_max_model_len", backend=sims["small"].url[7:]) == 256
    assert gw.metric("switchyard_backend_max_model_len", backend=sims["large"].url[7:]) == 1024
    # About 500 prompt tokens (2000 characters) plus 100: only the 1024 fits.
    for _ in range(6):
        response = chat(gw, "ctx", "abcd " * 400, max_tokens=100)
        assert served_by(response) == "ctx-large"
    assert gw.metric("switchyard_picker_context_skips_total", route="ctx") >= 6
    # Short enough for both: both serve.
    seen = {served_by(chat(gw, "ctx", "hello", max_tokens=10)) for _ in range(6)}
    assert seen == {"ctx-small", "ctx-large"}
    before = chat_requests(sims["small"]) + chat_requests(sims["large"])
    # About 1250 prompt tokens plus 100: nobody fits. The gateway's own 400, the numbers
    # in it, and no backend saw the request.
    response = chat(gw, "ctx", "abcd " * 1000, max_tokens=100)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    assert "1250 prompt tokens" in error["message"]
    assert "max_tokens 100" in error["message"]
    assert "1350 tokens" in error["message"]
    assert "max_model_len) of route 'ctx' variant 'pool' is 1024" in error["message"]
    assert chat_requests(sims["small"]) + chat_requests(sims["large"]) == before
    assert gw.metric("switchyard_picker_context_refusals_total", route="ctx") == 1


def test_sessions_stay_on_their_endpoint(gw: GatewayProc) -> None:
    homes: dict[str, set[str]] = {}
    for turn in range(5):
        for session in ("s1", "s2", "s3"):
            response = chat(gw, "sess", f"turn {turn}", {"x-session-id": session})
            homes.setdefault(session, set()).add(served_by(response))
    assert all(len(home) == 1 for home in homes.values()), homes
    # The three new sessions were placed by load and rotation: not all on one endpoint.
    assert len(set().union(*homes.values())) == 2
    assert gw.metric("switchyard_picker_sessions_total", route="sess", result="miss") == 3
    assert gw.metric("switchyard_picker_sessions_total", route="sess", result="hit") == 12
    # Without a session key, requests spread.
    spread = {served_by(chat(gw, "sess", "no session")) for _ in range(4)}
    assert spread == {"pick-a", "pick-b"}


def test_prefix_affinity_while_unloaded_and_spread_under_load(
    gw: GatewayProc, sims: dict[str, Simulator]
) -> None:
    first = served_by(chat(gw, "prefix", "Where is my order #1?", system=SYSTEM))
    for i in range(2, 8):
        assert served_by(chat(gw, "prefix", f"Where is my order #{i}?", system=SYSTEM)) == first
    picks = gw.metric("switchyard_picker_picks_total", route="prefix", scorer="prefix_cache")
    assert picks >= 6
    assert gw.metric("switchyard_picker_prefix_blocks_total", route="prefix", result="hit") > 0
    # The admin API's explain shows the live scores: the holder holds the prompt's blocks.
    body = {
        "model": "prefix",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Where is my order #9?"},
        ],
    }
    explained = httpx.post(
        f"{gw.admin}/admin/explain", json={"route": "prefix", "body": body}, timeout=10
    ).json()["picker"]
    holder = sims["a"] if first == "pick-a" else sims["b"]
    rows = {row["url"]: row for row in explained["endpoints"]}
    blocks = explained["request"]["prefix_blocks"]
    assert blocks >= 3 and rows[holder.url]["prefix_blocks"] == blocks
    assert rows[holder.url]["best"] and rows[holder.url]["scores"]["prefix_cache"] == 2
    # Six at once that each take two seconds: the holder takes them while it has at most
    # spread_above (2) more in flight than the other; past that the other gets some.
    slow = {"x-sim-latency-ms": "2000"}

    def one(i: int) -> str:
        return served_by(chat(gw, "prefix", f"Order #{i} again?", slow, system=SYSTEM))

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(one, range(6)))
    other = "pick-b" if first == "pick-a" else "pick-a"
    assert got.count(first) >= 3 and got.count(other) >= 1, got
    assert gw.metric("switchyard_picker_picks_total", route="prefix", scorer="queue") >= 1
