"""The real-BentoML stage: two fraud services (champion, challenger) shared by the session.

Run it with `make test-bentoml` (it builds .venv-bentoml first). A missing environment
fails every test with the command to run; only a platform BentoML cannot run on at all
skips, saying which (support.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends.bentoml.bentoml_proc import BentoService, environment_problem
from tests.backends.bentoml.support import unsupported_reason
from tests.backends.stage import require_backend

CHAMPION_SEED = 1
CHALLENGER_SEED = 2


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so the stage runs alone (pytest tests/backends/bentoml) with
    # warnings as errors even where the main configuration does not list it.
    config.addinivalue_line(
        "markers", "bentoml: needs real BentoML services from .venv-bentoml (make test-bentoml)"
    )


@pytest.fixture(scope="session")
def bento_services(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BentoService, BentoService]]:
    """Champion and challenger: the same service trained on different seeds."""
    require_backend("BentoML", unsupported_reason(), environment_problem())
    work = tmp_path_factory.mktemp("bentoml")
    champion = BentoService("champion", "1", CHAMPION_SEED, work)
    challenger = BentoService("challenger", "2", CHALLENGER_SEED, work)
    try:
        champion.start()
        challenger.start()
        print(
            f"\nBentoML ready in {champion.started_s:.1f} s and {challenger.started_s:.1f} s "
            f"on {champion.url} and {challenger.url}"
        )
        yield champion, challenger
    finally:
        champion.stop()
        challenger.stop()


@pytest.fixture
def bento(bento_services: tuple[BentoService, BentoService]) -> tuple[BentoService, BentoService]:
    for service in bento_services:
        service.ensure_running()
    return bento_services
