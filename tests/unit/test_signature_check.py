"""The request checker compiled from an MLflow signature: names, types, shapes, texts."""

from __future__ import annotations

import pytest

from gateway.dataplane.signature import (
    Signature,
    SignatureCheck,
    SignatureMismatch,
    parse_signature,
)

COLUMNS = parse_signature(
    '[{"type": "double", "name": "amount", "required": true},'
    ' {"type": "long", "name": "age", "required": true},'
    ' {"type": "string", "name": "country", "required": true},'
    ' {"type": "boolean", "name": "online", "required": false}]'
)
TENSOR = parse_signature(
    [{"type": "tensor", "name": "features", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]
)
UNNAMED = parse_signature([{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}])


def check(signature: Signature, protocol: str = "json") -> SignatureCheck:
    return SignatureCheck(signature, protocol, where="fraud version 4")


def refused(signature: Signature, body: dict[str, object], protocol: str = "json") -> str:
    with pytest.raises(SignatureMismatch) as info:
        check(signature, protocol).check(body)
    assert info.value.status == 400 and info.value.code == "signature_mismatch"
    return info.value.message


def v2(name: str, datatype: str, shape: list[int], data: list[object]) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def test_parse_reads_columns_and_tensors() -> None:
    assert not COLUMNS.tensors and [i.name for i in COLUMNS.inputs][:2] == ["amount", "age"]
    assert COLUMNS.inputs[3].required is False
    assert TENSOR.tensors and TENSOR.inputs[0].shape == (-1, 4)
    assert TENSOR.describe() == "tensors 'features' float64 [-1, 4]"
    with pytest.raises(ValueError, match="mixes"):
        parse_signature(
            [
                {"type": "double", "name": "a"},
                {"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}},
            ]
        )
    with pytest.raises(ValueError, match="non-empty"):
        parse_signature("[]")


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 12.5, "age": 40, "country": "de"},
        {"amount": 12, "age": 40, "country": "de", "online": True, "threshold": 0.5},
        {"amount": [1.0, 2.0], "age": [1, 2], "country": ["de", "fr"]},
        {"dataframe_records": [{"amount": 1.0, "age": 3, "country": "de"}]},
        {"dataframe_split": {"columns": ["amount", "age", "country"], "data": [[1.0, 2, "x"]]}},
        {"inputs": {"amount": [1.0], "age": [2], "country": ["x"]}},
        {"instances": [{"amount": 1.0, "age": 2, "country": "x"}]},
    ],
)
def test_json_columns_accepted(body: dict[str, object]) -> None:
    check(COLUMNS).check(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"amount": "12.5", "age": 40, "country": "de"},
            "input 'amount': expected double, got string",
        ),
        ({"amount": 1.0, "age": 4.5, "country": "de"}, "input 'age': expected long, got number"),
        ({"amount": 1.0, "age": True, "country": "de"}, "input 'age': expected long, got boolean"),
        ({"amount": 1.0, "country": "de"}, "input 'age' is missing: expected 'age' long"),
        (
            {"amount": [1.0, "x"], "age": [1, 2], "country": ["a", "b"]},
            "input 'amount': expected double, got string",
        ),
        (
            {"dataframe_records": [{"amount": 1.0, "age": 1, "country": 7}]},
            "input 'country': expected string, got integer",
        ),
        (
            {"dataframe_split": {"columns": ["amount", "age"], "data": [[1.0, 2]]}},
            "input 'country' is missing from dataframe_split.columns",
        ),
        (
            {"amount": 1.0, "age": 1, "country": "x", "online": "yes"},
            "input 'online': expected boolean, got string",
        ),
    ],
)
def test_json_columns_refused_naming_the_field(body: dict[str, object], message: str) -> None:
    text = refused(COLUMNS, body)
    assert text.startswith(message), text
    assert text.endswith("(signature of fraud version 4)")


def test_json_tensor_shapes() -> None:
    check(TENSOR).check({"features": [[1.0, 2.0, 3.0, 4.0], [0, 0, 0, 1]]})
    check(TENSOR).check({"inputs": {"features": [[1.0, 2.0, 3.0, 4.0]]}})
    check(UNNAMED).check({"inputs": [1, 2, 3]})
    assert "expected shape [-1, 4], got 3 values at depth 1" in refused(
        TENSOR, {"features": [[1.0, 2.0, 3.0]]}
    )
    assert "expected shape [-1, 4], got number at depth 1" in refused(
        TENSOR, {"features": [1.0, 2.0, 3.0, 4.0]}
    )
    assert "input 'features': expected float64 values, got string" in refused(
        TENSOR, {"features": [[1.0, 2.0, 3.0, "x"]]}
    )
    assert "input 'features' is missing" in refused(TENSOR, {"rows": [[1, 2, 3, 4]]})
    assert "expected int64 values, got number" in refused(UNNAMED, {"inputs": [1, 2.5]})


def test_kserve_v2_names_datatypes_shapes() -> None:
    cols = check(COLUMNS, "kserve-v2")
    ok = [v2("amount", "FP64", [2], [1, 2]), v2("age", "INT32", [2, 1], [1, 2])]
    cols.check({"inputs": [*ok, v2("country", "BYTES", [2], ["a", "b"])]})
    assert "input 'amount': expected FP64 (double), got BYTES" in refused(
        COLUMNS,
        {"inputs": [v2("amount", "BYTES", [1], ["x"]), *ok[1:], v2("country", "BYTES", [1], [""])]},
        "kserve-v2",
    )
    assert "input 'country' is missing" in refused(COLUMNS, {"inputs": ok}, "kserve-v2")
    assert "input 'amount': expected shape [-1] (a column), got [2, 2]" in refused(
        COLUMNS, {"inputs": [v2("amount", "FP64", [2, 2], [1, 2, 3, 4])]}, "kserve-v2"
    )
    assert "input 'other' is not an input of the model" in refused(
        COLUMNS, {"inputs": [v2("other", "FP64", [1], [1])]}, "kserve-v2"
    )
    tensor = check(TENSOR, "kserve-v2")
    tensor.check({"inputs": [v2("features", "FP64", [3, 4], [0] * 12)]})
    tensor.check({"inputs": [v2("features", "FP32", [1, 4], [0] * 4)]})  # widens safely
    assert "expected shape [-1, 4], got [1, 5]" in refused(
        TENSOR, {"inputs": [v2("features", "FP64", [1, 5], [0] * 5)]}, "kserve-v2"
    )
    assert "expected FP64 (float64), got INT64" in refused(
        TENSOR, {"inputs": [v2("features", "INT64", [1, 4], [0] * 4)]}, "kserve-v2"
    )
    # One unnamed tensor takes any input name.
    check(UNNAMED, "kserve-v2").check({"inputs": [v2("INPUT0", "INT64", [3], [1, 2, 3])]})


def test_json_apis_filter() -> None:
    only = SignatureCheck(COLUMNS, "json", apis=frozenset({b"/predict"}))
    assert only.applies(b"/predict") and not only.applies(b"/classify")
    assert SignatureCheck(COLUMNS, "json").applies(b"/anything")
