"""Loading policy files: every problem reported, each with file, line, column and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.controlplane.policy.compile import load_checked
from gateway.controlplane.policy.loader import (
    PolicyError,
    PolicyProblem,
    collect_policies,
    load_policies,
    parse_policies,
    policy_files,
)

GOOD = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - name: champion
    weight: 90
    endpoints: [http://127.0.0.1:9101]
  - name: challenger
    weight: 10
    endpoints: [http://127.0.0.1:9102]
"""


def problems_of(tmp_path: Path, text: str, name: str = "chat.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_checked(path)
    return [str(p) for p in info.value.problems]


def test_valid_file_loads_with_its_source(tmp_path: Path) -> None:
    path = tmp_path / "chat.yaml"
    path.write_text(GOOD.format(route="chat"))
    [loaded] = load_policies(path)
    assert loaded.policy.route == "chat"
    assert [v.weight for v in loaded.policy.variants] == [90.0, 10.0]
    assert (loaded.source.file, loaded.source.document) == (str(path), 0)
    assert loaded.source.where() == f"{path}:1"


def test_unknown_key_names_line_column_field_and_suggests_the_right_one(tmp_path: Path) -> None:
    text = GOOD.format(route="chat").replace("    weight: 10\n", "    wieght: 10\n")
    assert problems_of(tmp_path, text) == [
        f"{tmp_path}/chat.yaml:9:5: variants[1].wieght: unknown field 'wieght'; "
        "did you mean 'weight'?"
    ]


def test_unknown_top_level_key_lists_allowed_fields(tmp_path: Path) -> None:
    text = GOOD.format(route="chat") + "frobnicate: []\n"
    [problem] = problems_of(tmp_path, text)
    assert problem.startswith(f"{tmp_path}/chat.yaml:11:1: frobnicate: unknown field 'frobnicate'")
    assert "variants" in problem


def test_bad_type_and_bad_bound(tmp_path: Path) -> None:
    text = GOOD.format(route="chat").replace("weight: 90", "weight: heavy")
    text = text.replace("weight: 10", "weight: -1")
    assert problems_of(tmp_path, text) == [
        f"{tmp_path}/chat.yaml:6:5: variants[0].weight: "
        "Input should be a valid number, unable to parse string as a number",
        f"{tmp_path}/chat.yaml:9:5: variants[1].weight: Input should be greater than or equal to 0",
    ]


def test_bad_duration(tmp_path: Path) -> None:
    text = GOOD.format(route="chat") + "timeouts:\n  connect: 5 parsecs\n  total: 0s\n"
    assert problems_of(tmp_path, text) == [
        f"{tmp_path}/chat.yaml:12:3: timeouts.connect: invalid duration '5 parsecs': use a "
        "number of seconds or units ms, s, m, h (for example 250ms, 10s, 2m, 1m30s)",
        f"{tmp_path}/chat.yaml:13:3: timeouts.total: Input should be greater than 0",
    ]


def test_bad_urls_point_at_the_list_item(tmp_path: Path) -> None:
    text = GOOD.format(route="chat").replace(
        "    endpoints: [http://127.0.0.1:9102]\n",
        "    endpoints:\n      - http://127.0.0.1:9102\n      - https://secure:443\n"
        "      - ftp://files\n",
    )
    problems = problems_of(tmp_path, text)
    assert problems[0].startswith(f"{tmp_path}/chat.yaml:12:9: variants[1].endpoints[1]: ")
    assert "https:// endpoints are not supported yet" in problems[0]
    assert problems[1].startswith(f"{tmp_path}/chat.yaml:13:9: variants[1].endpoints[2]: ")
    assert "plain http:// URLs" in problems[1]
    assert len(problems) == 2


def test_duplicate_route_across_files_names_both_places(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.format(route="chat"))
    (tmp_path / "b.yaml").write_text(
        GOOD.format(route="embed") + "---\n" + GOOD.format(route="chat")
    )
    with pytest.raises(PolicyError) as info:
        load_checked(tmp_path)
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path}/b.yaml:14:1: route: route 'chat' is already defined at {tmp_path}/a.yaml:1"
    ]


def test_override_naming_no_variant(tmp_path: Path) -> None:
    text = GOOD.format(route="chat") + (
        "overrides:\n  - match: {header: {x-cohort: beta}}\n    variant: challengr\n"
    )
    assert problems_of(tmp_path, text) == [
        f"{tmp_path}/chat.yaml:13:5: overrides[0].variant: no variant named 'challengr' "
        "(variants: champion, challenger)"
    ]


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    text = GOOD.format(route="chat") + "fallback: [champion\ntimeouts: {}\n"
    [problem] = problems_of(tmp_path, text)
    assert problem.startswith(f"{tmp_path}/chat.yaml:12:9: YAML syntax error: ")
    assert "flow sequence" in problem


def test_every_problem_of_every_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.format(route="a").replace("weight: 90", "weight: x"))
    (tmp_path / "b.yml").write_text(GOOD.format(route="b") + "protocol: grpc\n")
    (tmp_path / "c.yaml").write_text("route: [\n")
    (tmp_path / "notes.txt").write_text("not a policy")
    (tmp_path / ".hidden.yaml").write_text("also not loaded")
    policies, problems = collect_policies(tmp_path)
    assert policies == []
    assert [(Path(p.file).name, p.line, p.field_path) for p in problems] == [
        ("a.yaml", 6, "variants[0].weight"),
        ("b.yml", 11, "protocol"),
        ("c.yaml", 2, ""),
    ]
    assert "Input should be 'openai', 'ollama', 'kserve-v2' or 'json'" in problems[1].message


def test_several_documents_in_one_file_and_empty_documents(tmp_path: Path) -> None:
    text = (
        "---\n" + GOOD.format(route="a") + "---\n# only a comment\n---\n" + GOOD.format(route="b")
    )
    path = tmp_path / "many.yaml"
    path.write_text(text)
    loaded = load_policies(path)
    assert [(p.policy.route, p.source.document, p.source.where()) for p in loaded] == [
        ("a", 0, f"{path}:2"),
        ("b", 2, f"{path}:15"),
    ]


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    text = GOOD.format(route="chat") + "fallback: [champion]\nfallback: [challenger]\n"
    assert problems_of(tmp_path, text) == [
        f"{tmp_path}/chat.yaml:12:1: fallback: duplicate key (first at line 11)"
    ]


def test_retries_on_key_is_not_read_as_yaml_boolean(tmp_path: Path) -> None:
    # YAML 1.1 would turn the key `on` into True; policies use YAML 1.2 booleans.
    path = tmp_path / "chat.yaml"
    path.write_text(
        GOOD.format(route="chat") + "retries: {on: [connect-error, 502], attempts: 3}\n"
    )
    [loaded] = load_policies(path)
    assert loaded.policy.retries.on == ("connect-error", 502)


def test_other_kinds_of_manifest_get_one_clear_problem(tmp_path: Path) -> None:
    text = "apiVersion: apps/v1\nkind: Deployment\nspec: {replicas: 2}\n"
    assert problems_of(tmp_path, text) == [
        f"{tmp_path}/chat.yaml:2:1: kind: expected kind RoutingPolicy (or a ConfigMap holding "
        "policies), got 'Deployment'"
    ]


def test_missing_fields_point_at_the_enclosing_node(tmp_path: Path) -> None:
    text = (
        "apiVersion: switchyard/v1\nkind: RoutingPolicy\nvariants:\n  - weight: 1\n  - name: bare\n"
    )
    assert problems_of(tmp_path, text) == [
        f"{tmp_path}/chat.yaml:1:1: route: Field required",
        f"{tmp_path}/chat.yaml:4:5: variants[0].name: Field required",
        f"{tmp_path}/chat.yaml:5:5: variants[1]: a variant needs `endpoints` (http:// URLs) "
        "or `target` (models:/NAME@ALIAS)",
    ]


CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: switchyard-policies}
data:
  README: not a policy, ignored
  embed.yaml: |
    apiVersion: switchyard/v1
    kind: RoutingPolicy
    route: embed
    variants: [{name: champion, endpoints: ['http://127.0.0.1:9101']}]
  chat.yaml: |
    apiVersion: switchyard/v1
    kind: RoutingPolicy
    route: chat
    variants:
      - name: champion
        weight: -5
        endpoints: [http://127.0.0.1:9101]
"""


def test_configmap_problems_name_the_data_key_and_line_within_it(tmp_path: Path) -> None:
    assert problems_of(tmp_path, CONFIGMAP, "cm.yaml") == [
        f"{tmp_path}/cm.yaml:data[chat.yaml]:6:5: variants[0].weight: "
        "Input should be greater than or equal to 0"
    ]


def test_valid_configmap_loads_each_entry(tmp_path: Path) -> None:
    path = tmp_path / "cm.yaml"
    path.write_text(CONFIGMAP.replace("weight: -5", "weight: 5"))
    loaded = load_checked(path)
    assert [(p.policy.route, p.source.file) for p in loaded] == [
        ("chat", f"{path}:data[chat.yaml]"),
        ("embed", f"{path}:data[embed.yaml]"),
    ]


def test_missing_path_and_empty_directory_are_problems(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _, problems = collect_policies([tmp_path / "gone.yaml", empty])
    assert [str(p) for p in problems] == [
        f"{empty}: no *.yaml or *.yml files",
        f"{tmp_path}/gone.yaml: no such file or directory",
    ]


def test_policy_files_expands_directories_in_sorted_order(tmp_path: Path) -> None:
    for name in ("b.yml", "a.yaml", "c.json", ".x.yaml"):
        (tmp_path / name).write_text("")
    single = tmp_path / "c.json"
    assert policy_files([tmp_path, single]) == [tmp_path / "a.yaml", tmp_path / "b.yml", single]


def test_problem_rendering() -> None:
    assert str(PolicyProblem("p.yaml", 12, 7, "variants[1].weight", "too low")) == (
        "p.yaml:12:7: variants[1].weight: too low"
    )
    assert str(PolicyProblem("p.yaml", 0, 0, "", "cannot read")) == "p.yaml: cannot read"


def test_parse_policies_of_text_without_a_file() -> None:
    policies, problems = parse_policies(GOOD.format(route="chat"), "<admin>")
    assert problems == []
    assert policies[0].source.file == "<admin>"
