"""A test's missing external program fails it in CI and skips it elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.programs import in_ci, require_program


def test_a_missing_program_fails_in_ci(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"wrk not installed .*CI=true"):
        require_program("wrk", "apt-get install wrk", env={"CI": "true"}, path=str(tmp_path))


def test_a_missing_program_skips_on_a_developer_machine(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match=r"wrk not installed \(apt-get install wrk\)"):
        require_program("wrk", "apt-get install wrk", env={}, path=str(tmp_path))


def test_a_present_program_is_returned_either_way(tmp_path: Path) -> None:
    tool = tmp_path / "wrk"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    for env in ({"CI": "true"}, {}):
        assert require_program("wrk", "-", env=env, path=str(tmp_path)) == str(tool)


@pytest.mark.parametrize(
    ("value", "ci"), [("true", True), ("TRUE", True), ("1", True), ("", False), ("false", False)]
)
def test_ci_is_what_ci_services_set(value: str, ci: bool) -> None:
    assert in_ci({"CI": value}) is ci
