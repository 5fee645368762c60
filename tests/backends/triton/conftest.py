"""The real-Triton stage: one Triton server (pytriton, CPU) shared by the session.

Run it with `make test-triton` (it builds .venv-triton first). A missing environment
fails every test with the command to run; only a platform nvidia-pytriton cannot run on
at all skips, saying which (support.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends.stage import require_backend
from tests.backends.triton.support import unsupported_reason
from tests.backends.triton.triton_proc import TritonServer, environment_problem


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so the stage runs alone (pytest tests/backends/triton) with
    # warnings as errors even where the main configuration does not list it.
    config.addinivalue_line(
        "markers", "triton: needs a real Triton server from .venv-triton (make test-triton)"
    )


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The session's Triton server; tests take it through `triton`, which restarts it."""
    require_backend("pytriton", unsupported_reason(), environment_problem())
    server = TritonServer(tmp_path_factory.mktemp("triton"))
    server.start()
    print(f"\nTriton ready in {server.started_s:.1f} s on {server.url} grpc {server.grpc_hostport}")
    yield server
    server.stop()


@pytest.fixture
def triton(triton_server: TritonServer) -> TritonServer:
    triton_server.ensure_running()
    return triton_server
