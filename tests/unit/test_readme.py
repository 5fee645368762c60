"""The README is the front door: the two-command quick start, and links that resolve.

The references it used to carry (policy fields, metrics) live in the docs site now, and
tests/unit/test_docs_generated.py checks those against the code.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_two_command_quick_start() -> None:
    assert "make run" in README
    assert "make test" in README


def test_readme_stays_short() -> None:
    # The manual is docs/; the README only introduces and points into it.
    assert len(README.splitlines()) <= 250


def test_relative_links_resolve() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if "://" not in t]
    assert local, "expected links into docs/"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
