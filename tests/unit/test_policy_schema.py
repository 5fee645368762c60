"""The policy document model: field types, normalisation and the committed JSON schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.controlplane.policy.fields import parse_duration, split_endpoint, split_target
from gateway.controlplane.policy.schema import RoutingPolicy, policy_json_schema, render_json_schema

ROOT = Path(__file__).resolve().parents[2]


def policy(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "switchyard/v1",
        "kind": "RoutingPolicy",
        "route": "chat",
        "variants": [{"name": "champion", "endpoints": ["http://127.0.0.1:9101"]}],
    }
    doc.update(changes)
    return doc


def errors(doc: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as info:
        RoutingPolicy.model_validate(doc)
    return [(tuple(e["loc"]), e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("0.5s", 0.5),
        (" 3 ", 3.0),
        (7, 7.0),
        (1.5, 1.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    parsed = RoutingPolicy.model_validate(policy(timeouts={"connect": text}))
    assert parsed.timeouts.connect == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["10 s", "s", "", "1d", "5x", "10s5", True])
def test_bad_durations(bad: object) -> None:
    [(loc, message)] = errors(policy(timeouts={"idle": bad}))
    assert loc == ("timeouts", "idle")
    assert "duration" in message


def test_durations_must_be_positive() -> None:
    assert errors(policy(outlier={"base_ejection": "0ms"})) == [
        (("outlier", "base_ejection"), "Input should be greater than 0")
    ]


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("http://127.0.0.1:9101", ("127.0.0.1", 9101, "")),
        ("http://svc.ns:8000/v1/", ("svc.ns", 8000, "/v1")),
        ("HTTP://Host", ("host", 80, "")),
        ("http://[::1]:81/a/b", ("::1", 81, "/a/b")),
    ],
)
def test_endpoint_urls(url: str, parts: tuple[str, int, str]) -> None:
    assert split_endpoint(url) == parts


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://h:443", "https:// endpoints are not supported yet"),
        ("h:80", "plain http:// URLs"),
        ("http://:80", "no host"),
        ("http://h:99999", "port must be a number"),
        ("http://u:p@h", "credentials"),
        ("http://h/?q=1", "no query string"),
    ],
)
def test_bad_endpoint_urls(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        split_endpoint(url)


def test_duplicate_endpoint_in_a_pool() -> None:
    doc = policy(variants=[{"name": "a", "endpoints": ["http://h:1", "http://h:1/"]}])
    assert errors(doc) == [
        (("variants", 0, "endpoints"), "endpoint http://h:1 is listed twice"),
    ]


def test_registry_targets() -> None:
    assert split_target("models:/chat@champion") == ("chat", "champion", None)
    assert split_target("models:/fraud-detector/12") == ("fraud-detector", None, "12")
    for bad in ("models:/chat", "models:/chat@", "runs:/abc/model", "models:/a/b/c"):
        with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
            split_target(bad)
    [(loc, message)] = errors(policy(variants=[{"name": "a", "target": "models:/x"}]))
    assert loc == ("variants", 0, "target")
    assert "invalid registry target" in message


def test_header_names_are_lower_cased_and_checked() -> None:
    parsed = RoutingPolicy.model_validate(
        policy(
            sticky={"hash_on": "header:X-User-Id"},
            overrides=[{"match": {"header": {"X-Cohort": "Beta"}}, "variant": "champion"}],
        )
    )
    assert parsed.sticky is not None
    assert (parsed.sticky.source, parsed.sticky.key) == ("header", "x-user-id")
    assert parsed.overrides[0].match.header == {"x-cohort": "Beta"}
    assert errors(policy(sticky={"hash_on": "header:bad name"})) == [
        (("sticky", "hash_on"), "'bad name' is not a valid HTTP header name")
    ]
    [(loc, _)] = errors(
        policy(overrides=[{"match": {"header": {"X-A": "1", "x-a": "2"}}, "variant": "c"}])
    )
    assert loc == ("overrides", 0, "match", "header")


def test_sticky_sources() -> None:
    parsed = RoutingPolicy.model_validate(policy(sticky={"hash_on": "body:user"}))
    assert parsed.sticky is not None
    assert (parsed.sticky.source, parsed.sticky.key) == ("body", "user")
    assert errors(policy(sticky={"hash_on": "cookie:sid"}))[0][0] == ("sticky", "hash_on")
    assert errors(policy(sticky={"hash_on": "body:a.b"}))[0][0] == ("sticky", "hash_on")


def test_retry_conditions() -> None:
    parsed = RoutingPolicy.model_validate(
        policy(retries={"on": ["Connect-Error", "reset", 429, "503"]})
    )
    assert parsed.retries.on == ("connect-error", "reset", 429, 503)
    assert errors(policy(retries={"on": ["teapot", 200], "attempts": 11, "budget": 2})) == [
        (("retries", "attempts"), "Input should be less than or equal to 10"),
        (("retries", "budget"), "Input should be less than or equal to 1"),
        (
            ("retries", "on", 0),
            "'teapot': expected connect-error, reset, timeout or an HTTP status from 400 to 599",
        ),
        (
            ("retries", "on", 1),
            "200: expected connect-error, reset, timeout or an HTTP status from 400 to 599",
        ),
    ]


def test_route_and_variant_names() -> None:
    assert RoutingPolicy.model_validate(policy(route="meta-llama/Llama-3.1:8b")).route
    assert errors(policy(route="-bad"))[0][0] == ("route",)
    assert errors(policy(route="x" * 129))[0][0] == ("route",)
    bad_variant = [{"name": "has space", "endpoints": ["http://h:1"]}]
    assert errors(policy(variants=bad_variant))[0][0] == ("variants", 0, "name")


def test_variant_count_limits() -> None:
    many = [{"name": f"v{i}", "endpoints": ["http://h:1"]} for i in range(17)]
    assert errors(policy(variants=many))[0][0] == ("variants",)
    assert errors(policy(variants=[]))[0][0] == ("variants",)


def test_api_version_and_kind_are_required_literals() -> None:
    doc = policy()
    del doc["apiVersion"]
    assert errors(doc) == [(("apiVersion",), "Field required")]
    assert errors(policy(kind="Routing"))[0] == (("kind",), "Input should be 'RoutingPolicy'")


def test_committed_schema_matches_the_models() -> None:
    assert (ROOT / "policies" / "schema.json").read_text() == render_json_schema()


def test_every_schema_property_has_a_description() -> None:
    schema = policy_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    assert schema["additionalProperties"] is False
    models = [schema, *schema["$defs"].values()]
    for model in models:
        assert model.get("description"), model["title"]
        assert model["additionalProperties"] is False, model["title"]
        for name, prop in model["properties"].items():
            assert prop.get("description"), f"{model['title']}.{name}"
