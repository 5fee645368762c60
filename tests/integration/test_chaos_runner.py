"""The chaos runner end to end, short: `python -m loadtests.chaos --quick` on loopback.

The quick set (reload, endpoint kill, shadow faults, stream cut, client disconnect,
SIGTERM drain) runs against real processes with small counts; every row must pass, the
table must name each scenario, and the JSON must carry the counts the README's table
is built from. The slow scenarios (alias moves with MLflow, drift worker kill) run in
`make chaos`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICK = {"reload", "endpoint-kill", "shadow-faults", "stream-cut", "disconnect", "sigterm-drain"}


@pytest.mark.timeout(150)
def test_quick_chaos_run_passes_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.chaos", "--quick", "--json", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert done.returncode == 0, f"chaos run failed:\n{done.stdout}\n{done.stderr}"
    rows = {r["scenario"]: r for r in json.loads(output.read_text())["results"]}
    assert set(rows) == QUICK
    for name, row in rows.items():
        assert row["verdict"] == "PASS", (name, row)
        assert row["requests"] > 0 and row["failures"] == 0, (name, row)
        assert f"| {name} |" in done.stdout
    assert rows["endpoint-kill"]["details"]["ejected"] is True
    assert rows["endpoint-kill"]["details"]["served_after_restart"] > 0
    assert rows["disconnect"]["details"]["in_flight_after"] == [0, 0]
    assert rows["sigterm-drain"]["details"]["exit_code"] == 0


def test_unknown_scenario_is_refused_with_the_known_names() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.chaos", "--scenario", "no-such-thing"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown scenario(s): no-such-thing" in done.stderr
    assert "endpoint-kill" in done.stderr
