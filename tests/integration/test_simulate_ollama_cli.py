"""`switchyard simulate ollama` as a process: its one stdout line, signals, exit codes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import ollama
import pytest

from tests.procs import REPO, spawn, start_simulator

LISTENING = re.compile(r"^switchyard-sim ollama listening on (http://127\.0\.0\.1:\d+)$")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_prints_exactly_one_line_and_exits_zero_on_sigterm() -> None:
    proc = spawn(["simulate", "ollama", "--port", "0", "--name", "cli-ollama"])
    try:
        url = proc.wait_for(LISTENING).group(1)
        response = httpx.get(f"{url}/api/tags", timeout=5)
        assert response.headers["x-sim-name"] == "cli-ollama"
        assert [m["name"] for m in response.json()["models"]] == ["sim:latest"]
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(10) == 0
    finally:
        proc.stop()
    assert proc.output().splitlines() == [f"switchyard-sim ollama listening on {url}"]


def test_error_rate_and_faults_from_the_command_line() -> None:
    sim = start_simulator("faulty-ollama", "--error-rate", "1", "--latency-ms", "20", kind="ollama")
    try:
        with ollama.Client(host=sim.url) as client:
            with pytest.raises(ollama.ResponseError) as failed:
                client.generate(model="m", prompt="hi")
            assert (failed.value.status_code, failed.value.error) == (
                500,
                "simulated failure: 500",
            )
        view = httpx.get(f"{sim.url}/sim/faults", timeout=5).json()
        assert view == {"faults": ["status=500:1"], "health_status": 200}
    finally:
        sim.proc.stop()


def test_help_documents_fault_syntax() -> None:
    result = run_cli("simulate", "ollama", "--help")
    assert result.returncode == 0
    assert "KIND[=VALUE][:RATE]" in result.stdout
    assert "x-sim-cut-after" in result.stdout
    assert "--served-model" in result.stdout


@pytest.mark.parametrize(
    "bad", [["--fault", "explode"], ["--error-rate", "2"], ["--embedding-dim", "0"]]
)
def test_bad_options_exit_2(bad: list[str]) -> None:
    result = run_cli("simulate", "ollama", "--port", "0", *bad)
    assert result.returncode == 2
    assert result.stdout == ""
