"""Semantic versions and signatures: when a version is incompatible with the champion."""

from __future__ import annotations

import pytest

from gateway.controlplane.registry.signatures import (
    VersionFacts,
    incompatibility,
    parse_semver,
    read_mlmodel,
    signature_changes,
)
from gateway.dataplane.signature import parse_signature

V1 = parse_signature([{"type": "double", "name": "amount"}, {"type": "string", "name": "country"}])


def facts(
    version: str, semver: str = "", signature: object = None, model: str = "fraud"
) -> VersionFacts:
    return VersionFacts(model, version, semver, signature)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("2", (2, 0, 0)), ("1.4", (1, 4, 0)), ("v1.4.2", (1, 4, 2)), ("2.0.0-rc.1", (2, 0, 0))],
)
def test_parse_semver(text: str, parsed: tuple[int, int, int]) -> None:
    assert parse_semver(text) == parsed


@pytest.mark.parametrize("text", ["", "two", "1.x", "1.2.3.4"])
def test_parse_semver_refuses(text: str) -> None:
    assert parse_semver(text) is None


def test_major_and_inputs_make_the_sentence_the_issue_asks_for() -> None:
    retyped = parse_signature(
        [{"type": "string", "name": "amount"}, {"type": "string", "name": "country"}]
    )
    why = incompatibility(facts("4", "2.0.0", retyped), facts("3", "1.4.2", V1))
    assert why == (
        "version 4 of fraud is semver 2.0.0, the champion (version 3) is 1.4.2: "
        "MAJOR differs; inputs: 'amount' double -> string"
    )


def test_compatible_changes() -> None:
    assert incompatibility(facts("4", "1.5.0", V1), facts("3", "1.4.2", V1)) is None
    # A new optional input and a widened type keep old clients working.
    wider = parse_signature(
        [
            {"type": "double", "name": "amount"},
            {"type": "string", "name": "country"},
            {"type": "long", "name": "age", "required": False},
        ]
    )
    assert signature_changes(V1, wider) == []
    narrow = parse_signature([{"type": "integer", "name": "n"}])
    widened = parse_signature([{"type": "long", "name": "n"}])
    assert signature_changes(narrow, widened) == []
    assert signature_changes(widened, narrow) == ["'n' long -> integer"]
    # No semver tags, no signatures: nothing says incompatible.
    assert incompatibility(facts("4"), facts("3")) is None


def test_signature_changes_name_each_input() -> None:
    renamed = parse_signature(
        [{"type": "double", "name": "value"}, {"type": "string", "name": "country"}]
    )
    assert signature_changes(V1, renamed) == ["'amount' removed", "'value' added (required)"]
    why = incompatibility(facts("5", "1.5.0", renamed), facts("3", "1.4.2", V1))
    assert why is not None and "inputs: 'amount' removed, 'value' added (required)" in why
    tensors = parse_signature(
        [{"type": "tensor", "name": "x", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]
    )
    wider = parse_signature(
        [{"type": "tensor", "name": "x", "tensor-spec": {"dtype": "float64", "shape": [-1, 5]}}]
    )
    assert signature_changes(tensors, wider) == ["'x' float64 [-1, 4] -> float64 [-1, 5]"]
    assert signature_changes(V1, tensors) == ["columns -> tensors"]
    # Without semver tags the sentence still names both versions.
    why = incompatibility(facts("5", signature=renamed), facts("3", signature=V1))
    assert why is not None and why.startswith(
        "version 5 of fraud does not fit the champion (version 3): inputs:"
    )


def test_major_only_compares_the_same_model() -> None:
    other = facts("1", "3.0.0", V1, model="fraud-v3")
    assert incompatibility(other, facts("3", "1.0.0", V1)) is None


def test_read_mlmodel() -> None:
    text = b"""artifact_path: model
flavors:
  python_function: {loader_module: mlflow.sklearn}
signature:
  inputs: '[{"type": "double", "name": "amount", "required": true}]'
  outputs: '[{"type": "long", "required": true}]'
"""
    signature = read_mlmodel(text)
    assert signature is not None and signature.describe() == "columns 'amount' double"
    assert read_mlmodel(b"flavors: {}\n") is None
    with pytest.raises(ValueError, match="not JSON"):
        read_mlmodel(b"signature:\n  inputs: 'not json'\n")
