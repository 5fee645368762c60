"""The `picker` block: validation with file:line, what it compiles to, reloads, explain."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.controlplane.backends.load import set_lora
from gateway.controlplane.policy.compile import compile_snapshot, load_checked
from gateway.controlplane.policy.explain import explain, render_text
from gateway.controlplane.policy.loader import PolicyError, parse_policies
from gateway.dataplane.decide import RequestHead
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.observability.metrics import GatewayMetrics

HEAD = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
"""


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "chat.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_checked(path)
    return [str(p) for p in caught.value.problems]


def compiled(text: str, health: HealthRegistry | None = None) -> RuntimeSnapshot:
    policies, problems = parse_policies(text, "chat.yaml")
    assert problems == []
    metrics = GatewayMetrics()
    return compile_snapshot(policies, metrics=metrics, health=health or HealthRegistry(metrics))


def test_bad_scorers_are_named_with_file_line_and_field(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        HEAD
        + """variants:
  - name: a
    endpoints: ["http://127.0.0.1:9001"]
    picker:
      scorers: {prefix_cach: 2, queue: -1}
""",
    )
    path = tmp_path / "chat.yaml"
    assert found == [
        f"{path}:8:17: variants[0].picker.scorers.prefix_cach: unknown field 'prefix_cach'; "
        "did you mean 'prefix_cache'?",
        f"{path}:8:33: variants[0].picker.scorers.queue: Input should be greater than or "
        "equal to 0",
    ]


@pytest.mark.parametrize(
    ("picker", "line", "message"),
    [
        ("{scorers: {queue: 0}}", 5, "picker.scorers needs a weight above 0"),
        ("{scorers: {session: 2}}", 5, "scorers.session needs `session: {key: header:NAME}`"),
        (
            "{scorers: {queue: 1}, session: {key: 'header:x-session-id'}}",
            5,
            "`session` is set but scorers.session is not",
        ),
        (
            "{scorers: {queue: 1}, prefix_cache: {block_bytes: 256}}",
            5,
            "`prefix_cache` is set but scorers.prefix_cache is not",
        ),
        ("{scorers: {session: 1}, session: {key: 'body:a.b'}}", 5, "body fields are top-level"),
        ("{scorers: {queue: 1}, context: {chars_per_token: 0}}", 5, "greater than or equal"),
    ],
)
def test_inconsistent_pickers_are_refused(
    tmp_path: Path, picker: str, line: int, message: str
) -> None:
    text = (
        HEAD + f'variants: [{{name: a, endpoints: ["http://127.0.0.1:9001"]}}]\npicker: {picker}\n'
    )
    found = problems_of(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'chat.yaml'}:{line}:")
    assert message in found[0]


def test_a_picker_needs_an_llm_route(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        HEAD.replace("route: chat", "route: fraud\nprotocol: kserve-v2")
        + """variants:
  - name: a
    endpoints: ["http://127.0.0.1:9001"]
    picker: {scorers: {queue: 1}}
""",
    )
    assert len(found) == 1
    assert ":8:5: variants[0].picker: picker applies to openai and ollama routes" in found[0]


def test_no_picker_is_the_default_pick_and_the_route_picker_applies_to_variants() -> None:
    plain = compiled(HEAD + 'variants: [{name: a, endpoints: ["http://127.0.0.1:9001"]}]\n')
    assert plain.routes["chat"].variants[0].picker is None
    snap = compiled(
        HEAD
        + """variants:
  - {name: a, endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}
  - name: b
    endpoints: ["http://127.0.0.1:9003"]
    picker: {scorers: {random: 1}}
picker:
  scorers: {prefix_cache: 2, queue: 1}
  prefix_cache: {block_bytes: 128, max_blocks: 8}
  context: {max_model_len: 8192}
"""
    )
    a, b = snap.routes["chat"].variants
    assert a.picker is not None and b.picker is not None
    assert a.picker.weights() == (1.0, 0.0, 2.0, 0.0, 0.0, 0.0)
    assert (a.picker.block_bytes, a.picker.max_blocks, a.picker.max_model_len) == (128, 8, 8192)
    assert a.picker.spread_above == 8 and a.picker.fit
    assert b.picker.weights() == (0.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # its own replaces the route's
    assert a.picker.states == tuple(e.state for e in a.endpoints)


def test_what_a_pool_learnt_survives_a_reload() -> None:
    text = (
        HEAD
        + """variants:
  - {name: a, endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}
picker: {scorers: {prefix_cache: 2, queue: 1}}
"""
    )
    metrics = GatewayMetrics()
    health = HealthRegistry(metrics)
    first = compiled(text, health).routes["chat"].variants[0].picker
    assert first is not None
    first.pool.record([1, 2, 3], first.slots[1])
    # The pool grows by one endpoint, the others keep their slots and what they hold.
    grown = compiled(
        text.replace(
            '"http://127.0.0.1:9002"]', '"http://127.0.0.1:9002", "http://127.0.0.1:9004"]'
        ),
        health,
    )
    second = grown.routes["chat"].variants[0].picker
    assert second is not None and second.pool is first.pool
    assert second.slots[:2] == first.slots
    assert second.pool.depths([1, 2, 3]) == {first.slots[1]: 3}


BODY = (
    '{"model": "chat", "messages": [{"role": "system", "content": "%s"}, '
    '{"role": "user", "content": "hi"}], "max_tokens": 100}'
)


def test_explain_shows_the_picker_and_the_scores(tmp_path: Path) -> None:
    text = (
        HEAD
        + """variants:
  - {name: a, endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}
picker:
  scorers: {prefix_cache: 2, queue: 1, session: 3}
  session: {key: "header:x-session-id"}
  context: {max_model_len: 4096}
"""
    )
    snap = compiled(text)
    head = RequestHead(
        "chat",
        ((b"x-session-id", b"abc"),),
        {"model": "chat", "messages": [{"role": "user", "content": "be brief " * 200}]},
    )
    result = explain(snap, head, random.Random(0), now=1.0)
    picker = result["picker"]
    assert picker["scorers"] == {"queue": 1.0, "prefix_cache": 2.0, "session": 3.0}
    assert picker["session"]["key"] == "header:x-session-id"
    assert picker["request"]["session"] == "abc"
    assert picker["request"]["prefix_blocks"] == 3
    rows = picker["endpoints"]
    assert [r["url"] for r in rows] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert all(r["candidate"] and r["best"] and r["total"] == 1.0 for r in rows)
    lines = render_text(result)
    assert "picker:    queue 1, prefix_cache 2, session 3; spread_above 8" in lines
    assert "scores:    http://127.0.0.1:9001 1 (queue 1) <- best" in lines
    # Too long for every endpoint: explain says what the client would get.
    policies = tmp_path / "p"
    policies.mkdir()
    (policies / "chat.yaml").write_text(text)
    body = tmp_path / "big.json"
    body.write_text(BODY % ("word " * 4000))
    assert main(["policy", "explain", "--route", "chat", "--policies", str(policies),
                 "--body", str(body)]) == 0  # fmt: skip
    result = explain(snap, RequestHead("chat", (), {"messages": [{"content": "w " * 9000}]}),
                     random.Random(0))  # fmt: skip
    assert (
        "the largest context length (max_model_len) of route 'chat'" in result["picker"]["refused"]
    )
    assert "4096" in result["picker"]["refused"]


def test_explain_shows_the_lora_adapter_and_issued_sessions() -> None:
    health = HealthRegistry(GatewayMetrics())
    snap = compiled(
        HEAD
        + """variants:
  - name: a
    model: sql-lora
    endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    load_metrics: vllm
picker:
  scorers: {lora: 2, queue: 1, session: 3}
  session: {key: issued}
""",
        health,
    )
    a = snap.routes["chat"].variants[0]
    assert a.picker is not None and a.picker.adapter == "sql-lora" and a.picker.session_issue
    set_lora(a.endpoints[0].state, ("law",), (), 1)  # full without it: a swap
    set_lora(a.endpoints[1].state, ("sql-lora",), (), 1)  # running it
    head = RequestHead("chat", (), {"model": "chat", "messages": [{"content": "hi"}]})
    result = explain(snap, head, random.Random(0), now=1.0)
    picker = result["picker"]
    assert picker["lora"] == {"adapter": "sql-lora"}
    assert picker["session"]["key"] == "issued (x-switchyard-session)"
    assert picker["request"]["session_issued"] == "none sent: the gateway issues a new token"
    rows = picker["endpoints"]
    assert [r["lora"]["adapter"] for r in rows] == ["swap", "running"]
    assert [r["scores"]["lora"] for r in rows] == [0.0, 2.0]
    lines = render_text(result)
    assert "lora:      adapter sql-lora" in lines
    assert "session:   key issued (x-switchyard-session), ttl 1800s" in lines
    assert "           http://127.0.0.1:9002 3 (queue 1, lora 2; adapter running) <- best" in lines
    assert "scores:    http://127.0.0.1:9001 1 (queue 1; adapter swap)" in lines
    # A token sent is shown as the session (the serving gateway verifies it).
    sent = RequestHead(
        "chat",
        ((b"x-switchyard-session", b"ss1.abc.def"),),
        {"model": "chat", "messages": [{"content": "hi"}]},
    )
    assert explain(snap, sent, random.Random(0), now=1.0)["picker"]["request"]["session"] == (
        "ss1.abc.def"
    )


def test_a_lora_scorer_needs_the_backends_lora_reports(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        HEAD
        + """variants:
  - {name: a, model: sql-lora, endpoints: ["http://127.0.0.1:9001"], load_metrics: vllm}
  - {name: b, model: law-lora, endpoints: ["http://127.0.0.1:9002"]}
picker: {scorers: {lora: 2, queue: 1}}
""",
    )
    assert found == [
        f"{tmp_path / 'chat.yaml'}:6:5: variants[1].load_metrics: scorers.lora needs "
        "`load_metrics: vllm` on the variant (the LoRA adapters each endpoint runs are read "
        "from vLLM's /metrics)"
    ]


def test_issued_sessions_are_for_every_variant_of_the_route(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        HEAD
        + """variants:
  - {name: a, endpoints: ["http://127.0.0.1:9001"]}
  - name: b
    endpoints: ["http://127.0.0.1:9002"]
    picker: {scorers: {queue: 1}}
picker:
  scorers: {queue: 1, session: 3}
  session: {key: issued}
""",
    )
    assert found == [
        f"{tmp_path / 'chat.yaml'}:8:5: variants[1].picker: `session: {{key: issued}}` pins a "
        "conversation's variant, so every variant of the route must issue sessions: put it "
        "in the route's `picker` (and in each variant's own picker, if any)"
    ]
