"""Session tokens the gateway issues (`session: {key: issued}`): minting, verification
under the fleet secret, and how a token pins the variant and the endpoint."""

from __future__ import annotations

import random

import orjson
import pytest
from prometheus_client.exposition import generate_latest

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import parse_policies
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.feedback.ids import FeedbackIds
from gateway.dataplane.health import HealthRegistry
from gateway.dataplane.session_tokens import (
    SESSION_HEADER,
    header_line,
    mint,
    pin,
    verify,
)
from gateway.dataplane.snapshot import RuntimeSnapshot
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.picker_metrics import SESSION_HIT, SESSION_INVALID, SESSION_MISS

SECRET = b"a fleet secret of at least 16 bytes"
POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: stable, weight: 90, endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}
  - {name: canary, weight: 10, endpoints: ["http://127.0.0.1:9003", "http://127.0.0.1:9004"]}
picker:
  scorers: {queue: 1, session: 3}
  session: {key: issued, ttl: 60s}
"""


def snapshot(text: str = POLICY) -> tuple[RuntimeSnapshot, GatewayMetrics]:
    policies, problems = parse_policies(text, "chat.yaml")
    assert problems == []
    metrics = GatewayMetrics()
    return compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics)), metrics


def test_a_token_verifies_on_any_process_with_the_secret_and_nowhere_else() -> None:
    token = mint(FeedbackIds(SECRET), "chat", "canary")
    assert token.startswith(b"ss1.") and len(token) < 120
    assert verify(FeedbackIds(SECRET), token, "chat") == "canary"  # another replica
    assert verify(FeedbackIds(b"another secret, another fleet"), token, "chat") is None
    assert verify(FeedbackIds(SECRET), token, "other-route") is None
    assert mint(FeedbackIds(SECRET), "chat", "canary") != token  # every session its own


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t[:-1] + (b"A" if t[-1:] != b"A" else b"B"),  # the MAC
        lambda t: t[:8] + (b"A" if t[8:9] != b"A" else b"B") + t[9:],  # the payload
        lambda t: t.replace(b"ss1.", b"fb1."),  # another kind of token
        lambda t: t[:-3],  # truncated
        lambda t: t + b"=",
        lambda t: t.replace(b".", b"!"),
        lambda t: b"ss1..aaaaaaaaaaaaaaaaaaaaaa",
        lambda t: b"ss1." + b"A" * 2000 + t[-23:],
        lambda t: b"\xff\xfe",
        lambda t: b"x-session-1",  # a client's own session id
    ],
)
def test_damaged_or_forged_tokens_do_not_verify(damage: object) -> None:
    signer = FeedbackIds(SECRET)
    token = mint(signer, "chat", "canary")
    assert verify(signer, damage(token), "chat") is None  # type: ignore[operator]


def test_a_feedback_id_is_not_a_session_token() -> None:
    signer = FeedbackIds(SECRET)
    fid = signer.mint("chat", "canary", "1")
    assert verify(signer, fid, "chat") is None
    assert verify(signer, b"ss1." + fid[4:], "chat") is None  # its MAC covers "fb1."


def test_names_too_long_get_no_token() -> None:
    assert mint(FeedbackIds(SECRET), "chat", "v" * 256) == b""
    assert header_line(b"") == b""


def decided(snap: RuntimeSnapshot, fields: dict[bytes, bytes], seed: int) -> object:
    head = RequestHead("chat", tuple(fields.items()), {"model": "chat"}, fields)
    return decide(snap, head, random.Random(seed))


def test_the_token_keeps_its_variant_whatever_the_weighted_draw() -> None:
    snap, _ = snapshot()
    signer = FeedbackIds(SECRET)
    first = pin(decided(snap, {}, 1), {}, signer)  # type: ignore[arg-type]
    assert first.token and not first.rejected
    name = first.decision.variant.name
    assert verify(signer, first.token, "chat") == name
    fields = {SESSION_HEADER: first.token}
    for seed in range(200):  # both variants come up in the draws; the token's serves
        later = pin(decided(snap, fields, seed), fields, signer)  # type: ignore[arg-type]
        assert later.decision.variant.name == name
        assert later.token == first.token and not later.rejected
        assert later.decision.order == (later.decision.variant,)  # no fallback: none


def test_a_canary_token_moves_when_the_canary_is_rolled_back() -> None:
    signer = FeedbackIds(SECRET)
    canary = mint(signer, "chat", "canary")
    snap, _ = snapshot(POLICY.replace("weight: 10", "weight: 0"))
    fields = {SESSION_HEADER: canary}
    got = pin(decided(snap, fields, 0), fields, signer)  # type: ignore[arg-type]
    assert got.decision.variant.name == "stable" and not got.rejected
    assert got.token != canary and verify(signer, got.token, "chat") == "stable"


def test_a_bad_token_is_a_new_session_not_an_error() -> None:
    snap, _ = snapshot()
    signer = FeedbackIds(SECRET)
    forged = mint(FeedbackIds(b"someone else's secret value"), "chat", "canary")
    fields = {SESSION_HEADER: forged}
    got = pin(decided(snap, fields, 3), fields, signer)  # type: ignore[arg-type]
    assert got.rejected and got.token != forged
    assert verify(signer, got.token, "chat") == got.decision.variant.name
    assert header_line(got.token) == b"x-switchyard-session: " + got.token + b"\r\n"


def test_the_token_pins_the_endpoint_and_counts_hits_misses_and_invalid() -> None:
    snap, metrics = snapshot()
    signer = FeedbackIds(SECRET)
    body = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})

    def serve(fields: dict[bytes, bytes], seed: int) -> tuple[bytes, str, int]:
        got = pin(decided(snap, fields, seed), fields, signer)  # type: ignore[arg-type]
        variant = got.decision.variant
        picker = variant.picker
        assert picker is not None and picker.session_issue
        ask = picker.ask(body, orjson.loads(body), fields)
        assert ask.session == b""  # issued sessions come from pin, never from the header
        ask.session, ask.rejected = got.token, got.rejected
        return got.token, variant.name, picker.choose(ask, 1.0, seed)

    token, name, idx = serve({}, 0)
    variant = next(v for v in snap.routes["chat"].variants if v.name == name)
    series = variant.picker.series  # type: ignore[union-attr]
    for seed in range(1, 20):  # the rotation would spread these; the session holds them
        assert serve({SESSION_HEADER: token}, seed)[1:] == (name, idx)
    assert series[idx].sessions[SESSION_MISS] == 1
    assert series[idx].sessions[SESSION_HIT] == 19
    serve({SESSION_HEADER: b"ss1.forged.aaaaaaaaaaaaaaaaaaaaaa"}, 0)
    invalid = sum(
        s.sessions[SESSION_INVALID]
        for v in snap.routes["chat"].variants
        for s in v.picker.series  # type: ignore[union-attr]
    )
    assert invalid == 1
    text = generate_latest(metrics.registry()).decode()
    lines = [line for line in text.splitlines() if 'result="invalid"' in line]
    assert len(lines) == 1 and lines[0].endswith(" 1.0"), lines
    assert 'route="chat"' in lines[0] and 'backend="127.0.0.1:900' in lines[0]


def test_verified_tokens_are_remembered_per_pool_and_bounded() -> None:
    snap, _ = snapshot(POLICY.replace("ttl: 60s", "ttl: 60s, max_sessions: 2"))
    signer = FeedbackIds(SECRET)
    stable = next(v for v in snap.routes["chat"].variants if v.name == "stable")
    pool = stable.picker.pool  # type: ignore[union-attr]
    tokens = [mint(signer, "chat", "canary") for _ in range(3)]
    forged = mint(FeedbackIds(b"someone else's secret value"), "chat", "canary")
    for seed in range(60):  # draws that decide stable look the token up in its pool
        token = tokens[seed % 3]
        fields = {SESSION_HEADER: token}
        decision = decided(snap, fields, seed)
        got = pin(decision, fields, signer)  # type: ignore[arg-type]
        assert got.decision.variant.name == "canary" and got.token == token
        assert pin(decision, {SESSION_HEADER: forged}, signer).rejected  # type: ignore[arg-type]
        assert forged not in pool.verified
    assert 0 < len(pool.verified) <= 2 and set(pool.verified.values()) == {"canary"}
    assert set(pool.verified) <= set(tokens)
