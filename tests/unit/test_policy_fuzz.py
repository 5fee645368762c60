"""Property tests of the policy loader: any text, any document, any ConfigMap is either
served or refused with located problems; no exception ever escapes.

An SRE's typo must never take the control plane down: the reloader keeps the last good
snapshot only if loading *returns* its problems. Documents are generated three ways:
arbitrary text, random YAML values, and mutations of a valid policy (which reach the
compiler, the part that turns checked policies into a snapshot).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.controlplane.policy.compile import check_policies, compile_snapshot
from gateway.controlplane.policy.loader import PolicyError, configmap_policies, parse_policies
from gateway.dataplane.health import HealthRegistry
from gateway.observability.metrics import GatewayMetrics

BUDGET = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

VALID: dict[str, Any] = {
    "apiVersion": "switchyard/v1",
    "kind": "RoutingPolicy",
    "route": "chat",
    "variants": [
        {"name": "champion", "weight": 90, "endpoints": ["http://127.0.0.1:9101"]},
        {"name": "challenger", "weight": 10, "endpoints": ["http://127.0.0.1:9102"]},
    ],
    "sticky": {"hash_on": "header:x-user-id"},
    "overrides": [{"match": {"header": {"x-cohort": "beta"}}, "variant": "challenger"}],
    "fallback": ["champion"],
    "timeouts": {"connect": "500ms", "first_byte": "10s", "total": "60s"},
    "retries": {"attempts": 2, "budget": 0.2, "on": ["connect-error", 502, 503]},
    "outlier": {"consecutive_failures": 5, "base_ejection": "30s"},
}

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "0s", "-1s", "1e309", "models:/m@a", "k8s://ns/svc:80", "file:///etc"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=15,
)


def check_outcome(text: str) -> None:
    """Loading returns policies and located problems, and never raises."""
    policies, problems = parse_policies(text, "fuzz.yaml")
    for problem in problems:
        assert str(problem).startswith("fuzz.yaml"), problem
        assert problem.message.strip(), problem
    if problems or not policies:
        return
    # Checked policies compile to a snapshot, or are refused as a PolicyError.
    found = check_policies(policies, registry=False, file_roots=())
    assert all(p.message.strip() for p in found)
    refused: tuple[object, ...] = ()
    try:
        compile_snapshot(
            policies, metrics=GatewayMetrics(), health=HealthRegistry(GatewayMetrics())
        )
    except PolicyError as exc:
        refused = exc.problems
        assert refused, "a refusal lists its problems"


@BUDGET
@given(text=st.text(max_size=400))
def test_any_text(text: str) -> None:
    check_outcome(text)


@BUDGET
@given(
    text=st.lists(
        st.sampled_from(
            [
                "apiVersion: switchyard/v1\n",
                "kind: RoutingPolicy\n",
                "route: chat\n",
                "variants:\n",
                "  - name: a\n",
                "    endpoints: [http://127.0.0.1:1]\n",
                "    weight: 5\n",
                "---\n",
                "&a [*a]\n",
                "key: !!python/object:os.system 'true'\n",
                "? [a, b]\n: c\n",
                "route: chat\nroute: other\n",
                "\t- tab\n",
                "kind: ConfigMap\ndata: {a.yaml: 'route: x'}\n",
                "'unterminated\n",
                "x: *undefined\n",
            ]
        ),
        max_size=8,
    ).map("".join)
)
def test_yaml_shaped_text(text: str) -> None:
    check_outcome(text)


@BUDGET
@given(doc=_values)
def test_any_document(doc: Any) -> None:
    check_outcome(yaml.safe_dump(doc, allow_unicode=True))


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated_policies(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(_values)
    return doc


@BUDGET
@given(doc=mutated_policies())
def test_mutated_valid_policy(doc: dict[str, Any]) -> None:
    check_outcome(yaml.safe_dump(doc, allow_unicode=True))


def test_the_unmutated_policy_compiles() -> None:
    """The base of the mutations is valid: mutations start from a servable policy."""
    policies, problems = parse_policies(yaml.safe_dump(VALID), "valid.yaml")
    assert not problems and len(policies) == 1
    snapshot = compile_snapshot(
        policies, metrics=GatewayMetrics(), health=HealthRegistry(GatewayMetrics())
    )
    assert set(snapshot.routes) == {"chat"}


_configmap_data = st.dictionaries(
    st.one_of(st.sampled_from(["a.yaml", "b.yml", "notes.txt", "policy.yaml"]), st.text()),
    st.one_of(st.just(yaml.safe_dump(VALID)), mutated_policies().map(yaml.safe_dump), _values),
    max_size=4,
)


@BUDGET
@given(data=_configmap_data, kind=st.sampled_from(["ConfigMap", "configmap", None]))
def test_configmap_documents(data: dict[Any, Any], kind: str | None) -> None:
    manifest: dict[str, Any] = {"apiVersion": "v1", "metadata": {"name": "policies"}}
    if kind is not None:
        manifest["kind"] = kind
    manifest["data"] = data
    check_outcome(yaml.safe_dump(manifest, allow_unicode=True))
    # The same entries as the Kubernetes API delivers them (no manifest around them).
    _, problems = configmap_policies(data, "ns/policies")
    assert all(p.message.strip() for p in problems)


def test_alias_bombs_and_deep_nesting_are_refused_quickly() -> None:
    laughs = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
    )
    cases = {
        laughs: "expands to more than",
        "variants: &v [*v]\n": "refers to the collection it is in",
        "a: " + "[" * 1200 + "]" * 1200: "nested too deeply",
        "a: " + "[" * 80 + "]" * 80: "nested deeper than 64",
        "route: \x08\n": "unacceptable character",
    }
    for text, expected in cases.items():
        started = time.monotonic()
        _, problems = parse_policies(text, "bomb.yaml")
        assert any(expected in p.message for p in problems), (expected, problems)
        assert time.monotonic() - started < 5.0  # the alias bomb took minutes before
