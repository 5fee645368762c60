"""What every real-backend stage's session fixture checks before it starts a server."""

from __future__ import annotations

import pytest


def require_backend(what: str, unsupported: str | None, problem: str | None) -> None:
    """Skip when this platform cannot run `what` at all; fail when only its venv is wrong.

    `unsupported` is the stage's support.unsupported_reason(), `problem` its
    environment_problem(): a missing or broken install must fail loudly, never skip.
    """
    if unsupported:
        pytest.skip(f"this platform cannot run {what} at all: {unsupported}")
    if problem:
        pytest.fail(problem)
