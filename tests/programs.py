"""External programs a few tests need (nginx, wrk), found or accounted for.

In CI (`CI=true`, as .ci/run and the usual CI services set it) the programs are
installed by .ci/run, so a missing one is an error: the test fails, saying so, instead
of a skip that turns a broken CI image green. On a developer's machine it skips with
what to install, which `-rs` (on every pytest line of the Makefile) shows in the summary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest


def in_ci(env: Mapping[str, str] = os.environ) -> bool:
    return env.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_program(name: str, path: str | None = None) -> str | None:
    """`name` on PATH (`path` instead, where given), else in an sbin directory: nginx's
    home, not on every user's PATH (the bench harness looks in the same places)."""
    found = shutil.which(name, path=path)
    if found is None and path is None:
        sbins = (Path("/usr/sbin") / name, Path("/usr/local/sbin") / name)
        found = next((str(p) for p in sbins if p.is_file()), None)
    return found


def require_program(
    name: str, install: str, *, env: Mapping[str, str] = os.environ, path: str | None = None
) -> str:
    """The program's path; else a failure in CI, a skip elsewhere."""
    found = find_program(name, path)
    if found is not None:
        return found
    message = f"{name} not installed ({install})"
    if in_ci(env):
        pytest.fail(f"{message}; CI=true, where .ci/run installs it: failing, not skipping")
    pytest.skip(message)
