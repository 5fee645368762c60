"""Platform checks the real-backend stages share. Standard library only: install.sh runs
each stage's support.py (`python3 -m tests.backends.<stage>.support`) with whatever
Python builds the venv, before anything is installed.

Only facts that no install can change belong here: a stage skips, saying which, on an
operating system, processor architecture or Python its packages publish nothing for.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable


def python_version() -> str:
    """This interpreter's version, as `3.11.7`."""
    return ".".join(map(str, sys.version_info[:3]))


def linux_wheel_reason(project: str, machines: tuple[str, ...]) -> str | None:
    """Why `project`, which publishes Linux wheels for `machines` only, has none here."""
    system = platform.system()
    if system != "Linux":
        return f"{project} publishes Linux wheels only; this is {system}"
    machine = platform.machine()
    if machine not in machines:
        return f"{project} has no wheel for {machine} (only {', '.join(machines)})"
    return None


def main(unsupported_reason: Callable[[], str | None]) -> None:
    """A support.py's command line: exit 0 when supported; print why not and exit 3."""
    reason = unsupported_reason()
    if reason:
        print(reason)
        sys.exit(3)
