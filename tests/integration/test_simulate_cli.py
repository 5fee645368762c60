"""`switchyard simulate openai` as a process: its one stdout line, signals, exit codes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest

from tests.procs import REPO, spawn, start_simulator

LISTENING = re.compile(r"^switchyard-sim openai listening on (http://127\.0\.0\.1:\d+)$")


def run_cli(*args: str, module: str = "gateway") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_prints_one_line_serves_and_exits_zero_on_signal(signum: int) -> None:
    sim = start_simulator("cli-sim")
    try:
        response = httpx.get(f"{sim.url}/health", timeout=5)
        assert response.status_code == 200
        assert response.headers["x-sim-name"] == "cli-sim"
        sim.proc.signal(signum)
        assert sim.proc.popen.wait(10) == 0
    finally:
        sim.proc.stop()
    assert sim.proc.output().splitlines() == [f"switchyard-sim openai listening on {sim.url}"]


def test_default_name_is_sim_port() -> None:
    proc = spawn(["simulate", "openai", "--port", "0"])
    try:
        url = proc.wait_for(LISTENING).group(1)
        port = url.rsplit(":", 1)[1]
        assert httpx.get(f"{url}/v1/models", timeout=5).headers["x-sim-name"] == f"sim-{port}"
    finally:
        assert proc.stop() == 0


def test_faults_from_the_command_line() -> None:
    sim = start_simulator("faulty", "--fault", "status=503:1", "--latency-ms", "50")
    try:
        response = httpx.post(
            f"{sim.url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            timeout=5,
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == 503
        view = httpx.get(f"{sim.url}/sim/faults", timeout=5).json()
        assert view == {"faults": ["status=503:1"], "health_status": 200}
    finally:
        sim.proc.stop()


def test_help_documents_fault_syntax() -> None:
    result = run_cli("simulate", "openai", "--help")
    assert result.returncode == 0
    assert "KIND[=VALUE][:RATE]" in result.stdout
    assert "status=503:0.1" in result.stdout
    assert "x-sim-cut-after" in result.stdout


@pytest.mark.parametrize(
    "bad",
    [["--fault", "explode:0.5"], ["--error-rate", "2"], ["--tokens", "-1"], ["--port", "70000"]],
)
def test_bad_options_exit_2(bad: list[str]) -> None:
    result = run_cli("simulate", "openai", *bad)
    assert result.returncode == 2
    assert result.stdout == ""


def test_port_in_use_exits_1() -> None:
    sim = start_simulator("holder")
    try:
        result = run_cli("simulate", "openai", "--port", str(sim.port))
        assert result.returncode == 1
        assert "cannot listen" in result.stderr
    finally:
        sim.proc.stop()


def test_standalone_module_entry_point() -> None:
    result = run_cli("openai", "--help", module="gateway.simulate")
    assert result.returncode == 0
    assert "x-sim-name" in result.stdout
