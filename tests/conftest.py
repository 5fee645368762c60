from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import GatewayProc, Simulator, start_gateway, start_simulator


@pytest.fixture(scope="session")
def sims() -> Iterator[tuple[Simulator, Simulator]]:
    """Two OpenAI simulators, champion and challenger, shared by the session."""
    a = start_simulator("sim-a", "--tokens", "8")
    try:
        b = start_simulator("sim-b", "--tokens", "8")
    except Exception:
        a.proc.stop()
        raise
    yield a, b
    a.proc.stop()
    b.proc.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    """Start gateways on policies written into a temp folder; all stopped afterwards."""
    started: list[GatewayProc] = []

    def make(*policies: str, extra: tuple[str, ...] = ()) -> GatewayProc:
        policy_dir = tmp_path / f"policies{len(started)}"
        policy_dir.mkdir()
        for i, text in enumerate(policies):
            (policy_dir / f"p{i}.yaml").write_text(text)
        gw = start_gateway(policy_dir, *extra)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.proc.stop()
