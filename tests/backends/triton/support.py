"""Can this platform run nvidia-pytriton at all? Standard library only (install.sh runs it).

    python3 -m tests.backends.triton.support   # exit 0: supported; exit 3: prints why not

Only facts that no install can change count here: the stage skips, saying which, where
nvidia-pytriton publishes no wheel or its tritonserver has no Python backend stub.
Everything else (an install that fails, a server that will not start) is a failure.
"""

from __future__ import annotations

import platform
import sys

from tests.backends.platforms import linux_wheel_reason, main, python_version

# nvidia-pytriton 0.7.0 ships manylinux_2_35 wheels for these machines, with Python
# backend stubs for Python 3.8 to 3.13 (pytriton/tritonserver/python_backend_stubs/).
SUPPORTED_MACHINES = ("x86_64", "aarch64")
GLIBC_MIN = (2, 35)
PYTHON_MIN = (3, 8)
PYTHON_BELOW = (3, 14)


def unsupported_reason() -> str | None:
    """Why nvidia-pytriton cannot run on this platform, or None when it can."""
    reason = linux_wheel_reason("nvidia-pytriton", SUPPORTED_MACHINES)
    if reason:
        return reason
    libc, version = platform.libc_ver()
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if libc != "glibc" or parts < GLIBC_MIN:
        found = f"{libc} {version}".strip() or "no glibc"
        return f"nvidia-pytriton's wheels need glibc >= 2.35; this has {found}"
    if not PYTHON_MIN <= sys.version_info[:2] < PYTHON_BELOW:
        found = python_version()
        return f"pytriton's Triton has Python backend stubs for 3.8-3.13 only; this is {found}"
    return None


if __name__ == "__main__":
    main(unsupported_reason)
