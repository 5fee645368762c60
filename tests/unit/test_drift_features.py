"""Feature extraction for the three protocols, on sample request bodies."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.controlplane.policy.driftspec import TEXT_DESCRIPTORS, FeatureSpec
from gateway.controlplane.policy.fields import split_path
from gateway.drift.features import build_extractor, describe_text, tensor_rows, value_at

CHAT: dict[str, Any] = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Order 42 ist DA, größe M"}]},
    ],
    "max_tokens": 64,
    "temperature": 0.5,
}


def test_chat_descriptors() -> None:
    row = describe_text(CHAT)
    assert set(row) == set(TEXT_DESCRIPTORS)
    text = "Be brief.\nOrder 42 ist DA, größe M"
    assert row["message_count"] == 2.0
    assert row["prompt_chars"] == float(len(text))
    assert row["prompt_words"] == 8.0
    assert row["non_ascii_share"] == pytest.approx(2 / len(text))  # ö, ß
    assert row["digit_share"] == pytest.approx(2 / len(text))
    assert row["uppercase_share"] == pytest.approx(5 / len(text))  # B O D A M
    assert row["max_tokens"] == 64.0
    assert row["temperature"] == 0.5


def test_completions_embeddings_and_ollama_bodies() -> None:
    assert describe_text({"prompt": ["a b", "c"]})["message_count"] == 2.0
    assert describe_text({"input": "hello there"})["prompt_words"] == 2.0
    ollama = describe_text(
        {"messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 9}}
    )
    assert ollama["max_tokens"] == 9.0
    empty = describe_text({"model": "x"})
    assert empty["prompt_chars"] == 0.0 and empty["non_ascii_share"] is None


def test_openai_extractor_defaults_to_every_descriptor_and_takes_paths() -> None:
    rows = build_extractor("openai", ())(CHAT)
    assert len(rows) == 1 and set(rows[0]) == set(TEXT_DESCRIPTORS)
    features = (
        FeatureSpec(descriptor="prompt_words", name="words"),
        FeatureSpec(path="temperature"),
    )
    assert build_extractor("openai", features)(CHAT) == [{"words": 8.0, "temperature": 0.5}]


KSERVE: dict[str, Any] = {
    "inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
        {"name": "country", "shape": [2, 1], "datatype": "BYTES", "data": [["de"], ["fr"]]},
    ]
}


def test_kserve_tensor_rows_are_samples() -> None:
    assert tensor_rows(KSERVE)["x"] == [[1, 2, 3], [4, 5, 6]]
    rows = build_extractor("kserve-v2", ())(KSERVE)
    assert rows == [
        {"x[0]": 1.0, "x[1]": 2.0, "x[2]": 3.0, "country[0]": "de"},
        {"x[0]": 4.0, "x[1]": 5.0, "x[2]": 6.0, "country[0]": "fr"},
    ]


def test_kserve_named_elements_and_unbatched_tensor() -> None:
    features = (
        FeatureSpec(tensor="x", index=2, name="amount"),
        FeatureSpec(tensor="x", index=9, name="absent"),
    )
    rows = build_extractor("kserve-v2", features)(KSERVE)
    assert rows == [{"amount": 3.0, "absent": None}, {"amount": 6.0, "absent": None}]
    flat = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [7, 8, 9]}]}
    assert build_extractor("kserve-v2", ())(flat) == [{"x[0]": 7.0, "x[1]": 8.0, "x[2]": 9.0}]
    assert build_extractor("kserve-v2", ())({"inputs": "nonsense"}) == []


BENTO: dict[str, Any] = {
    "customer": {"age": 41, "country": "DE", "vip": True},
    "items": [{"price": 9.5}, {"price": 20}],
    "note": None,
    "amount": 29.5,
}


def test_json_paths_and_default_top_level_fields() -> None:
    features = (
        FeatureSpec(path="customer.age"),
        FeatureSpec(path="customer.vip", name="vip"),
        FeatureSpec(path="items[1].price", name="second_price"),
        FeatureSpec(path="items[5].price", name="missing"),
    )
    rows = build_extractor("json", features)(BENTO)
    assert rows == [{"customer.age": 41.0, "vip": "true", "second_price": 20.0, "missing": None}]
    assert build_extractor("json", ())(BENTO) == [{"amount": 29.5}]


def test_value_at_is_total() -> None:
    assert value_at({"a": [1]}, split_path("a.b")) is None
    assert value_at({"a": "x" * 1000}, split_path("a")) == "x" * 256
    assert value_at({"a": float("nan")}, split_path("a")) is None


def reference_description(text: str) -> tuple[float, float | None]:
    """prompt_words and mean_word_length as first defined: by splitting the text."""
    words = text.split()
    return float(len(words)), (sum(map(len, words)) / len(words)) if words else None


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "one",
        "  Order 42, please:\tnow\n\nthanks  ",
        "a\x1cb\x1dc\x1ed\x1fe\x0bf\x0cg\rh",  # separators str.split splits on
        "größe M und Straße",  # non-ASCII letters
        "no\u00a0break\u2003em\u3000space\x85next",  # Unicode whitespace splits words
        "\u00a0 \u2003",  # Unicode whitespace only: no words
        "x" * 5000 + " y",
    ],
)
def test_word_counts_match_splitting_the_text(text: str) -> None:
    row = describe_text({"prompt": text})
    assert (row["prompt_words"], row["mean_word_length"]) == reference_description(text)


def test_every_descriptor_by_default_comes_in_the_declared_order() -> None:
    # The default row is describe_text's own dict: its key order is the JSON the
    # worker receives, so it must be TEXT_DESCRIPTORS' order.
    assert list(describe_text(CHAT)) == list(TEXT_DESCRIPTORS)
    assert list(build_extractor("openai", ())(CHAT)[0]) == list(TEXT_DESCRIPTORS)
    # All of them named explicitly, in another order: that order, the same values.
    reordered = [FeatureSpec(descriptor=name) for name in reversed(TEXT_DESCRIPTORS)]  # type: ignore[arg-type]
    (row,) = build_extractor("openai", reordered)(CHAT)
    assert list(row) == list(reversed(TEXT_DESCRIPTORS)) and row == describe_text(CHAT)


def test_word_counts_match_splitting_random_ascii_and_unicode_text() -> None:
    rng = random.Random(18)
    alphabet = [chr(c) for c in range(128)] + ["\u00a0", "\u2003", "é", "ß", "\x85"]
    for n in range(2000):
        size = rng.randrange(0, 40)
        # half the texts ASCII only (counted from the classes), half not (split)
        pool = alphabet if n % 2 else alphabet[:128]
        text = "".join(rng.choice(pool) for _ in range(size))
        row = describe_text({"prompt": text})
        assert (row["prompt_words"], row["mean_word_length"]) == reference_description(text), text
        ascii_only = text.encode("ascii", "ignore")
        assert row["digit_share"] == (
            sum(c in b"0123456789" for c in ascii_only) / len(text) if text else None
        )
        assert row["uppercase_share"] == (
            sum(65 <= c <= 90 for c in ascii_only) / len(text) if text else None
        )
