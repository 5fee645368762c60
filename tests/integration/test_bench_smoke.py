"""The benchmark harness still runs end to end: `loadtests/bench --quick` on loopback.

It checks the harness, not performance: every system answered, the gateway answered
only 2xx through the bench policy, and the JSON has what the README's table is built
from. Without nginx or wrk it fails in CI (.ci/run installs them) and skips, saying
what to install, elsewhere (tests/programs.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import gateway
from tests.programs import require_program

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "loadtests" / "bench"


@pytest.mark.timeout(60)
def test_quick_bench_measures_four_systems(tmp_path: Path) -> None:
    require_program("nginx", "apt-get install nginx")
    require_program("wrk", "apt-get install wrk")
    output = tmp_path / "bench.json"
    # The path this test pass runs (make test: compiled; make test-python: Python), so the
    # Python pass and machines without a compiler measure too instead of failing.
    dataplane = "compiled" if gateway.COMPILED.active else "python"
    args = ["--duration", "1", "--repeat", "1", "--quick", "--output", str(output)]
    args += ["--dataplane", dataplane]
    if gateway.COMPILED.active:  # mypyc and a C compiler are here: the compiled floor too
        args.append("--compiled-floor")
    done = subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, f"bench failed:\n{done.stdout}\n{done.stderr}"

    result = json.loads(output.read_text())
    systems = result["systems"]
    # The Python floor row (benchlib/floor.py) is on by default.
    floors = {"floor", "floor-compiled"} if gateway.COMPILED.active else {"floor"}
    assert set(systems) == {"direct", "nginx", "gateway", *floors}
    for name, entry in systems.items():
        assert entry["rps_median"] > 0, name
        assert entry["requests_total"] > 0, name
    assert systems["gateway"]["non2xx_total"] == 0
    assert systems["gateway"]["cpu_us_per_req"] > 0
    assert systems["gateway"]["rss_mb"] > 0
    # Measured again once scraped (the admin listener answers /metrics itself).
    assert systems["gateway"]["rss_scraped_mb"] > 0
    assert "rss_scraped_mb" not in systems["nginx"]
    assert result["ratios"]["gateway_vs_nginx_rps"] > 0
    assert result["ratios"]["gateway_vs_floor_rps"] > 0
    for floor in floors:
        assert systems[floor]["non2xx_total"] == 0
    if gateway.COMPILED.active:
        assert result["ratios"]["floor_compiled_vs_nginx_rps"] > 0
        assert "floor, compiled (mypyc)" in done.stdout
    # The canary really split: both variants served requests.
    assert set(result["gateway"]["variant_requests"]) == {"champion", "challenger"}
    assert result["machine"]["nproc"] >= 1
    assert "switchyard gateway" in done.stdout
    assert result["gateway"]["dataplane"] == dataplane


@pytest.mark.timeout(90)
def test_quick_streaming_bench_relays_every_stream_through_four_systems(tmp_path: Path) -> None:
    require_program("nginx", "apt-get install nginx")
    output = tmp_path / "streaming.json"
    dataplane = "compiled" if gateway.COMPILED.active else "python"
    args = ["--streaming", "--quick", "--output", str(output), "--dataplane", dataplane]
    done = subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, f"bench failed:\n{done.stdout}\n{done.stderr}"
    result = json.loads(output.read_text())
    assert [run["tokens"] for run in result["runs"]] == [20, 200]
    for run in result["runs"]:
        systems = run["systems"]
        # The Python floor relays the streams too (each read as it comes).
        assert set(systems) == {"direct", "nginx", "gateway", "floor"}
        for name, entry in systems.items():
            # role chunk + one per token + finish chunk + [DONE], every stream checked
            assert entry["events"] == run["tokens"] + 3, name
        for name in ("nginx", "gateway", "floor"):
            assert systems[name]["cpu_us_per_chunk"] > 0, name
