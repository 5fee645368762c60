"""`switchyard policy ...` through the real command-line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
POLICY = """\
apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: champion
    weight: 90
    endpoints: [http://127.0.0.1:9101]
  - name: challenger
    weight: {weight}
    endpoints: [http://127.0.0.1:9102]
sticky: {{hash_on: "header:x-user-id"}}
overrides:
  - match: {{header: {{x-cohort: beta}}}}
    variant: challenger
fallback: [champion]
"""


def policy_file(directory: Path, weight: object = 10, name: str = "chat.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(POLICY.format(weight=weight))
    return path


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = policy_file(tmp_path)
    assert main(["policy", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 1 routes (hash ")
    assert len(out.strip().rsplit(" ", 1)[1].rstrip(")")) == 12


def test_validate_reports_every_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = policy_file(tmp_path / "a", weight="-3")
    good = policy_file(tmp_path / "b")
    assert main(["policy", "validate", str(bad), str(good), str(tmp_path / "none.yaml")]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{bad}:9:5: variants[1].weight: Input should be greater than or equal to 0",
        f"{tmp_path}/none.yaml: no such file or directory",
        "2 problem(s)",
    ]


def test_validate_configmap_and_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    configmap = ROOT / "policies" / "examples" / "configmap.yaml"
    assert main(["policy", "validate", str(configmap)]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 routes")
    assert main(["policy", "validate", str(ROOT / "policies")]) == 0
    assert capsys.readouterr().out.startswith("ok: 6 routes")  # chat-ollama too


def test_diff_exit_codes_and_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = policy_file(tmp_path / "old")
    same = policy_file(tmp_path / "same")
    new = policy_file(tmp_path / "new", weight=25)
    bad = policy_file(tmp_path / "bad", weight="x")

    assert main(["policy", "diff", str(old), str(same)]) == 0
    assert capsys.readouterr().out.startswith("no changes (hash ")

    assert main(["policy", "diff", str(old), str(new)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "chat: variants[challenger].weight 10 -> 25"
    assert lines[1].startswith("1 change(s): hash ")

    assert main(["policy", "diff", str(old), str(bad)]) == 2
    out = capsys.readouterr().out
    assert f"{bad}: invalid policy set" in out
    assert "variants[1].weight" in out


def test_explain_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = policy_file(tmp_path)
    args = ["policy", "explain", "--policies", str(path), "--route", "chat"]
    assert main([*args, "--header", "X-Cohort=beta", "--header", "x-user-id=alice"]) == 0
    text = capsys.readouterr().out
    assert "variant:   challenger\n" in text
    assert "reason:    override - overrides[0] matched x-cohort=beta\n" in text

    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "chat", "messages": []}))
    assert main([*args, "--body", str(body), "--seed", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reason"] == "weighted"
    assert main([*args, "--body", str(body), "--seed", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == result  # the seed makes it reproducible

    assert main([*args, "--header", "x-user-id=alice", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sticky"]["value"] == "alice"


def test_explain_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = policy_file(tmp_path)
    base = ["policy", "explain", "--policies", str(path)]
    assert main([*base, "--route", "nope"]) == 1
    assert "unknown route 'nope'; routes: chat" in capsys.readouterr().err
    assert main([*base, "--route", "chat", "--header", "novalue"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err
    assert main([*base, "--route", "chat", "--body", str(tmp_path / "missing.json")]) == 2
    capsys.readouterr()
    broken = policy_file(tmp_path / "broken", weight="x")
    assert main(["policy", "explain", "--policies", str(broken), "--route", "chat"]) == 1


def test_explain_defaults_to_the_policies_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["policy", "explain", "--route", "completion", "--json", "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["variant"] in ("blue", "green")
    # A registry route without a registry explains why it cannot be served.
    assert main(["policy", "explain", "--route", "embed", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["variant"], result["reason"]) == (None, "unavailable")
    assert "models:/embed@champion: not resolved (no --registry-uri given)" in result["detail"]


def test_schema_output_equals_committed_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = (ROOT / "policies" / "schema.json").read_text()
    assert main(["policy", "schema"]) == 0
    assert capsys.readouterr().out == committed
    out = tmp_path / "schema.json"
    assert main(["policy", "schema", "--output", str(out)]) == 0
    assert out.read_text() == committed
    parsed = json.loads(committed)
    assert parsed["title"] == "RoutingPolicy"
    assert committed.endswith("}\n") and '\n  "$defs"' in committed
