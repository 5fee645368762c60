"""Wheel tags: platform-specific when the wheel carries the compiled request path.

Everything else about the package is in pyproject.toml. `switchyard compile` puts
CPython extension modules under gateway/_compiled/ (package data); a wheel holding them
only works on this Python and platform, so it must not be tagged `py3-none-any`.
"""

from pathlib import Path

from setuptools import setup
from setuptools.dist import Distribution

COMPILED_MANIFEST = Path(__file__).resolve().parent / "gateway" / "_compiled" / "manifest.json"


class _Distribution(Distribution):
    def has_ext_modules(self) -> bool:  # type: ignore[override]
        return COMPILED_MANIFEST.exists()


setup(distclass=_Distribution)
