"""Deterministic generated output, and the simulator's request counters."""

from __future__ import annotations

import base64
import math
import struct

from gateway.simulate.generate import TextModel, count_words, float32_le
from gateway.simulate.stats import MAX_PATHS, MAX_TRACES, OTHER_PATHS, SimStats


def test_count_words() -> None:
    assert count_words("") == 0
    assert count_words("  hello   there\nyou ") == 3


def test_tokens_deterministic_per_prompt_and_seed() -> None:
    model = TextModel(seed=3)
    key = model.key(["hello", "world"])
    assert model.tokens(key, 5) == TextModel(seed=3).tokens(key, 5)
    assert model.key(["hello", "world"]) != model.key(["hello", "there"])
    assert TextModel(seed=4).key(["hello", "world"]) != key


def test_tokens_concatenate_with_single_spaces() -> None:
    tokens = TextModel().tokens(12345, 4)
    assert not tokens[0].startswith(" ")
    assert all(t.startswith(" tok") for t in tokens[1:])
    assert len("".join(tokens).split(" ")) == 4
    assert TextModel().tokens(1, 0) == []


def test_embedding_unit_length_float32_exact() -> None:
    model = TextModel(seed=1)
    vector = model.embedding(model.key(["abc"]), 16)
    assert len(vector) == 16
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)
    decoded = list(struct.unpack("<16f", float32_le(vector)))
    assert decoded == vector  # float and base64 encodings carry the same numbers
    assert base64.b64decode(base64.b64encode(float32_le(vector))) == float32_le(vector)
    assert model.embedding(model.key(["abc"]), 16) == vector


def test_stats_lifecycle() -> None:
    stats = SimStats()
    a = stats.begin("/v1/chat/completions")
    b = stats.begin("/v1/chat/completions")
    c = stats.begin("/health")
    assert stats.in_flight == 3
    assert stats.in_flight_for(["/v1/chat/completions"]) == 2
    stats.end(a, "completed")
    stats.end(b, "cancelled")
    stats.reset()
    assert stats.snapshot() == {
        "started": 0,
        "completed": 0,
        "cancelled": 0,
        "aborted": 0,
        "in_flight": 1,  # a gauge: the /health request is still live
        "by_path": {},
        "traces": [],
    }
    stats.end(c, "aborted")
    assert stats.in_flight == 0
    assert stats.aborted == 1


def test_stats_keep_the_last_trace_contexts_bounded() -> None:
    stats = SimStats()
    stats.saw_headers("/v1/x", {"host": "sim"})  # no traceparent: nothing kept
    for i in range(MAX_TRACES + 5):
        stats.saw_headers(
            "/v1/x", {"traceparent": f"00-{i:032x}-{1:016x}-01", "x-request-id": f"r{i}"}
        )
    traces = stats.snapshot()["traces"]
    assert isinstance(traces, list) and len(traces) == MAX_TRACES
    assert traces[-1] == {
        "path": "/v1/x",
        "traceparent": f"00-{MAX_TRACES + 4:032x}-{1:016x}-01",
        "tracestate": "",
        "request_id": f"r{MAX_TRACES + 4}",
    }
    stats.reset()
    assert stats.snapshot()["traces"] == []


def test_stats_paths_bounded() -> None:
    stats = SimStats()
    for i in range(MAX_PATHS + 10):
        stats.end(stats.begin(f"/scan/{i}"), "completed")
    assert len(stats.by_path) == MAX_PATHS + 1
    assert stats.by_path[OTHER_PATHS] == 10
    assert stats.completed == MAX_PATHS + 10
