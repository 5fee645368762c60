"""Shadow comparisons on known answers: every number here is worked out by hand."""

from __future__ import annotations

import gzip
import random
import re
import struct

import orjson
import pytest

from gateway.dataplane.shadow.compare import (
    Tolerance,
    compare,
    jaccard,
    length_ratio,
    llm_text,
    words,
)
from gateway.dataplane.shadow.labels import predictions

TOL = Tolerance(numeric=1e-3, min_similarity=0.5)


def chat(text: str) -> bytes:
    return orjson.dumps(
        {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": text}}]}
    )


def sse(*deltas: str) -> bytes:
    events = [
        b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": d}}]}) + b"\n\n"
        for d in deltas
    ]
    usage = b'data: {"choices":[],"usage":{"completion_tokens":3}}\n\n'
    return b"".join(events) + usage + b"data: [DONE]\n\n"


def v2(*outputs: dict[str, object]) -> bytes:
    return orjson.dumps({"model_name": "m", "outputs": list(outputs)})


# LLM generations -------------------------------------------------------------------------


def test_jaccard_and_length_ratio_by_hand() -> None:
    # {the, cat, sat} vs {the, cat, ran, away}: 2 shared of 5 distinct words.
    a, b = words("The cat sat."), words("the cat ran away")
    assert jaccard(a, b) == pytest.approx(2 / 5)
    assert length_ratio(len(a), len(b)) == pytest.approx(4 / 3)
    assert jaccard([], []) == 1.0
    assert length_ratio(0, 0) == 1.0 and length_ratio(0, 3) is None


def test_words_are_the_runs_of_word_characters_lower_cased() -> None:
    tokens = ["card", "not", "present", "fraud", "rose", "4", "snake_case", "x", "y"]
    assert words("Card-not-present fraud rose 4%; snake_case\tX\x1fY") == tokens
    assert words("Straße ÜBER 2 Ärzte") == ["straße", "über", "2", "ärzte"]  # not ASCII
    # ASCII texts take a faster path than the regex: the same tokens for any of them.
    word = re.compile(r"\w+")
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(chr(rng.randrange(128)) for _ in range(rng.randrange(40)))
        assert words(text) == word.findall(text.lower()), repr(text)


def test_llm_agreement_is_jaccard_at_or_above_min_similarity() -> None:
    same = compare("openai", b"/v1/chat/completions", 200, chat("a b c d"), 200, chat("a b c"), TOL)
    # {a,b,c} / {a,b,c,d} = 0.75 >= 0.5
    assert same.result == "agree" and same.kind == "llm"
    assert same.similarity == pytest.approx(0.75)
    assert same.length_ratio == pytest.approx(0.75)
    assert same.primary_excerpt == "a b c d" and same.shadow_excerpt == "a b c"
    apart = compare("openai", b"/v1/chat/completions", 200, chat("a b c d"), 200, chat("a x"), TOL)
    # {a} / {a,b,c,d,x} = 0.2
    assert apart.result == "disagree" and apart.similarity == pytest.approx(0.2)


def test_the_same_answer_twice_agrees_as_equal_texts_do() -> None:
    # The same bytes are read once; the result is what two equal texts from different
    # bytes give (here the stream and the whole answer say the same).
    body = chat("Fraud rose 4%; chargebacks are flat.")
    same = compare("openai", b"/v1/chat/completions", 200, body, 200, body, TOL)
    other = compare("openai", b"/v1/chat/completions", 200, body, 200, bytes(body), TOL)
    streamed = sse("Fraud rose 4%;", " chargebacks are flat.")
    equal = compare("openai", b"/v1/chat/completions", 200, body, 200, streamed, TOL)
    assert same == other == equal
    assert same.result == "agree" and same.similarity == 1.0 and same.length_ratio == 1.0
    assert same.detail == "jaccard 1.000"
    assert same.primary_excerpt == same.shadow_excerpt == "Fraud rose 4%; chargebacks are flat."
    error = b'{"error": {"message": "boom"}}'
    both = compare("openai", b"/v1/chat/completions", 200, error, 200, error, TOL)
    assert both.result == "uncomparable" and "primary" in both.detail


def test_streams_are_assembled_before_comparing() -> None:
    streamed = sse("tok1", " tok2", " tok3")
    assert llm_text(streamed) == "tok1 tok2 tok3"
    result = compare(
        "openai", b"/v1/chat/completions", 200, chat("tok1 tok2 tok3"), 200, streamed, TOL
    )
    assert result.result == "agree" and result.similarity == 1.0


def test_ollama_shapes_whole_and_ndjson() -> None:
    whole = orjson.dumps({"model": "m", "message": {"role": "assistant", "content": "x y"}})
    ndjson = (
        b'{"message":{"role":"assistant","content":"x"},"done":false}\n'
        b'{"message":{"role":"assistant","content":" y"},"done":false}\n'
        b'{"message":{"role":"assistant","content":""},"done":true,"eval_count":2}\n'
    )
    generate = b'{"response":"x","done":false}\n{"response":" y","done":true}\n'
    assert llm_text(whole) == llm_text(ndjson) == llm_text(generate) == "x y"
    # An OpenAI route whose primary variant is translated from Ollama: either shape works.
    result = compare("openai", b"/v1/chat/completions", 200, ndjson, 200, chat("x y"), TOL)
    assert result.result == "agree"


def test_garbage_and_error_bodies_are_uncomparable_not_exceptions() -> None:
    for body in (b"\x16\x03\x01 not json", b'{"error": {"message": "boom"}}', b"[1, 2]"):
        result = compare("openai", b"/v1/chat/completions", 200, chat("a"), 200, body, TOL)
        assert result.result == "uncomparable", body
        assert "shadow" in result.detail


def test_status_decides_before_bodies() -> None:
    both = compare("openai", b"/v1/chat/completions", 503, b"x", 503, b"y", TOL)
    assert both.result == "agree" and both.kind == "status"
    one = compare("openai", b"/v1/chat/completions", 200, chat("a"), 500, b"{}", TOL)
    assert one.result == "disagree" and one.detail == "status 200 (primary) vs 500 (shadow)"


def test_gzip_bodies_are_read() -> None:
    result = compare(
        "openai", b"/v1/chat/completions", 200, gzip.compress(chat("a b")), 200, chat("a b"), TOL
    )
    assert result.result == "agree"


# Embeddings -------------------------------------------------------------------------------


def test_embeddings_tolerance_and_cosine() -> None:
    a = orjson.dumps({"data": [{"embedding": [1.0, 0.0]}, {"embedding": [0.0, 2.0]}]})
    b = orjson.dumps({"data": [{"embedding": [1.0, 0.0005]}, {"embedding": [0.0, 2.0]}]})
    near = compare("openai", b"/v1/embeddings", 200, a, 200, b, TOL)
    assert near.result == "agree" and near.kind == "embedding"
    assert near.max_abs_error == pytest.approx(0.0005)
    ortho = orjson.dumps({"embeddings": [[0.0, 1.0], [0.0, 2.0]]})  # Ollama /api/embed
    far = compare("ollama", b"/api/embed", 200, a, 200, ortho, TOL)
    # cosines 0 and 1: mean 0.5
    assert far.result == "disagree" and far.similarity == pytest.approx(0.5)


# KServe v2 tensors --------------------------------------------------------------------------


def test_tensors_agree_within_tolerance_per_output() -> None:
    a = v2(
        {"name": "probs", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]},
        {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["fraud"]},
    )
    b = v2(
        {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["fraud"]},
        {"name": "probs", "shape": [1, 2], "datatype": "FP32", "data": [[0.2502, 0.7498]]},
    )
    result = compare("kserve-v2", b"/v2/models/m/infer", 200, a, 200, b, TOL)
    assert result.result == "agree" and result.kind == "tensor"
    assert dict(result.outputs) == {"probs": True, "label": True}
    assert result.max_abs_error == pytest.approx(0.0002)
    exact = compare("kserve-v2", b"/v2/models/m/infer", 200, a, 200, b, Tolerance(numeric=0.0))
    assert exact.result == "disagree" and dict(exact.outputs) == {"probs": False, "label": True}
    assert exact.similarity == 0.5


def test_tensor_shape_missing_output_and_strings() -> None:
    a = v2(
        {"name": "y", "shape": [2], "datatype": "FP32", "data": [1, 2]},
        {"name": "z", "shape": [1], "datatype": "BYTES", "data": ["a"]},
    )
    b = v2({"name": "y", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]})
    result = compare("kserve-v2", b"/v2/models/m/infer", 200, a, 200, b, TOL)
    assert result.result == "disagree"
    assert dict(result.outputs) == {"y": False, "z": False}
    assert "z: missing" in result.detail and "shape" in result.detail
    binary = orjson.dumps({"outputs": [{"name": "y", "shape": [2], "datatype": "FP32"}]})
    skipped = compare("kserve-v2", b"/v2/models/m/infer", 200, a, 200, binary, TOL)
    assert skipped.result == "uncomparable"


def test_binary_tensor_extension_is_read() -> None:
    def binary(probs: list[float], labels: list[str]) -> bytes:
        raw_probs = struct.pack(f"<{len(probs)}f", *probs)
        raw_labels = b"".join(struct.pack("<I", len(x)) + x.encode() for x in labels)
        head = orjson.dumps(
            {
                "outputs": [
                    {
                        "name": "p",
                        "shape": [len(probs)],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw_probs)},
                    },
                    {
                        "name": "l",
                        "shape": [len(labels)],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(raw_labels)},
                    },
                ]
            }
        )
        return head + raw_probs + raw_labels

    a = binary([0.25, 0.75], ["ok", "fraud"])
    json_form = v2(
        {"name": "p", "shape": [2], "datatype": "FP32", "data": [0.25, 0.75]},
        {"name": "l", "shape": [2], "datatype": "BYTES", "data": ["ok", "fraud"]},
    )
    same = compare("kserve-v2", b"/v2/models/m/infer", 200, a, 200, json_form, TOL)
    assert same.result == "agree" and dict(same.outputs) == {"p": True, "l": True}
    other = binary([0.5, 0.5], ["ok", "ok"])
    differs = compare("kserve-v2", b"/v2/models/m/infer", 200, a, 200, other, TOL)
    assert dict(differs.outputs) == {"p": False, "l": False}
    assert differs.max_abs_error == pytest.approx(0.25)
    cut = compare("kserve-v2", b"/v2/models/m/infer", 200, a, 200, a[:-3], TOL)
    assert cut.result == "uncomparable"


# JSON classifiers ---------------------------------------------------------------------------


def test_classifier_label_agreement_and_probability_delta() -> None:
    a = b'{"label": "fraud", "probability": 0.90}'
    b = b'{"label": "fraud", "probability": 0.84}'
    result = compare("json", b"/services/fraud/predict", 200, a, 200, b, TOL)
    assert result.result == "agree" and result.kind == "classifier"
    assert result.probability_delta == pytest.approx(0.06)
    flipped = b'{"prediction": "ok", "probabilities": {"fraud": 0.3, "ok": 0.7}}'
    other = compare("json", b"/services/fraud/predict", 200, a, 200, flipped, TOL)
    # The primary's label is fraud at 0.9; the shadow gives fraud 0.3.
    assert other.result == "disagree" and other.probability_delta == pytest.approx(0.6)


def test_classifier_batches_and_pipeline_lists() -> None:
    hf = [[{"label": "POSITIVE", "score": 0.99}, {"label": "NEGATIVE", "score": 0.01}]]
    found = predictions(hf)
    assert found is not None and [p.label for p in found] == ["POSITIVE"]
    a = b'{"predictions": ["a", "b", "c", "d"]}'
    b = b'{"predictions": ["a", "b", "x", "d"]}'
    result = compare("json", b"/services/s/classify", 200, a, 200, b, TOL)
    assert result.result == "disagree" and result.similarity == pytest.approx(0.75)
    assert result.probability_delta is None
    aligned = predictions({"labels": ["spam", "ham"], "scores": [0.2, 0.8]})
    assert aligned is not None and aligned[0].label == "ham"


def test_other_json_compares_by_value_within_tolerance() -> None:
    a = b'{"amount": 100.0, "tags": ["x"], "ok": true}'
    near = compare(
        "json",
        b"/services/s/score",
        200,
        a,
        200,
        b'{"amount": 100.05, "tags": ["x"], "ok": true}',
        TOL,
    )
    assert near.result == "agree" and near.kind == "json"
    far = compare(
        "json",
        b"/services/s/score",
        200,
        a,
        200,
        b'{"amount": 101, "tags": ["x"], "ok": true}',
        TOL,
    )
    assert far.result == "disagree"
    bad = compare("json", b"/services/s/score", 200, a, 200, b"<html>", TOL)
    assert bad.result == "uncomparable"
