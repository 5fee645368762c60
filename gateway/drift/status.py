"""The drift worker's published state: one JSON file, plus HTML reports beside it.

The worker rewrites `status.json` every second (atomically: write, then rename), and
gateway processes read it for `/metrics` and the admin API. A file instead of a socket
between them: every gateway process (and the supervisor's workers) can read it without
the worker knowing who asks, the last results survive a worker restart, and the request
path never touches it.

Layout of the drift folder:

    status.json                        this module
    episodes.json                      drift episodes, so a restart does not act twice
    reports/ROUTE/VERSION.html         latest Evidently report per window
    windows/ROUTE/VERSION/*.parquet    drifted windows (default `on_drift.save_to`)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

STATUS_FILE = "status.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(name: str) -> str:
    """A route or version as one path segment: unchanged when already safe, otherwise
    cleaned and suffixed with a short hash (so `a/b` and `a_b` stay apart)."""
    if name and _UNSAFE.search(name) is None and name not in (".", ".."):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', name) or 'none'}-{digest}"


def label_version(version: str, variant: str) -> str:
    """The version a labeled window is kept under: the registry version, or, for an
    endpoint variant (it has none), `variant:NAME`, so that a rollout between two
    endpoint variants still has one labeled window per side."""
    return version or f"variant:{variant}"


REPORT_KINDS = ("data", "labels")  # data drift; concept drift (the labeled window)


def report_path(drift_dir: str | Path, route: str, version: str, kind: str = "data") -> Path:
    """Where the latest HTML report of one window lives: `kind` data (data drift) or
    labels (concept drift, the labeled window against the version's reference)."""
    suffix = ".labels.html" if kind == "labels" else ".html"
    return Path(drift_dir) / "reports" / safe_name(route) / f"{safe_name(version)}{suffix}"


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace `path` with `data` as JSON atomically (readers see old or new, whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)


class StatusReader:
    """Reads the worker's status file, re-parsing only when it changed."""

    def __init__(self, drift_dir: str | Path) -> None:
        self.path = Path(drift_dir) / STATUS_FILE
        self._stamp: tuple[int, int] | None = None
        self._data: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any] | None:
        """The last status written, or None if there is none (no worker ran yet)."""
        try:
            stat = self.path.stat()
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                data = orjson.loads(self.path.read_bytes())
                if isinstance(data, dict):
                    self._data, self._stamp = data, stamp
        return self._data
