"""Can this platform run BentoML with scikit-learn? Standard library only (install.sh runs it).

    python3 -m tests.backends.bentoml.support   # exit 0: supported; exit 3: prints why not

Only facts that no install can change count here: the stage skips, saying which, on an
operating system or Python that scikit-learn 1.9 or BentoML publish nothing for.
Everything else (an install that fails, a server that will not start) is a failure.
"""

from __future__ import annotations

import platform
import sys

from tests.backends.platforms import main, python_version

# bentoml serve runs its workers under a POSIX process supervisor; scikit-learn 1.9.1
# publishes wheels for CPython 3.11 and newer.
SUPPORTED_SYSTEMS = ("Linux", "Darwin")
PYTHON_MIN = (3, 11)


def unsupported_reason() -> str | None:
    """Why BentoML and scikit-learn cannot run on this platform, or None when they can."""
    system = platform.system()
    if system not in SUPPORTED_SYSTEMS:
        return f"the BentoML stage runs on Linux or macOS only; this is {system}"
    if sys.version_info[:2] < PYTHON_MIN:
        return f"scikit-learn 1.9 needs Python >= 3.11; this is {python_version()}"
    return None


if __name__ == "__main__":
    main(unsupported_reason)
