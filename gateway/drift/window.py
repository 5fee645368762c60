"""Rolling windows of live samples, one per (route, model version).

A window keeps the newest `size` rows and, with a `duration`, only rows younger than
it. Windows are per model version, not per variant, because drift is a property of the
data a model sees: when an alias moves to a new version, its samples start a new window
and the old one ages out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Row = Mapping[str, Any]
Key = tuple[str, str]  # (route, version)


@dataclass(eq=False, slots=True)
class Window:
    """The newest samples of one route and model version."""

    size: int
    duration: float | None = None
    rows: deque[Row] = field(default_factory=deque)
    times: deque[float] = field(default_factory=deque)
    received: int = 0  # rows ever added (a counter for /metrics)
    variants: set[str] = field(default_factory=set)  # variants that served this version
    last_added: float = 0.0

    def __post_init__(self) -> None:
        self.resize(self.size, self.duration)

    def resize(self, size: int, duration: float | None) -> None:
        """Apply new bounds, keeping the newest rows that fit."""
        self.size, self.duration = size, duration
        self.rows = deque(self.rows, maxlen=size)
        self.times = deque(self.times, maxlen=size)

    def add(self, rows: Iterable[Row], variant: str, now: float) -> None:
        for row in rows:
            self.rows.append(row)
            self.times.append(now)
            self.received += 1
        self.variants.add(variant)
        self.last_added = now

    def trim(self, now: float) -> None:
        """Drop rows older than `duration`."""
        if self.duration is None:
            return
        oldest = now - self.duration
        while self.times and self.times[0] < oldest:
            self.times.popleft()
            self.rows.popleft()

    def snapshot(self) -> list[Row]:
        """The rows now in the window, oldest first (a copy)."""
        return list(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


class Windows:
    """Every window of the worker, created on the first sample of a new version."""

    def __init__(self) -> None:
        self._windows: dict[Key, Window] = {}

    def get(self, key: Key, size: int, duration: float | None) -> Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = Window(size, duration)
        elif (window.size, window.duration) != (size, duration):
            window.resize(size, duration)
        return window

    def items(self) -> list[tuple[Key, Window]]:
        return sorted(self._windows.items())

    def forget(self, key: Key) -> None:
        """Drop one window (its version stopped receiving traffic)."""
        self._windows.pop(key, None)

    def keep_routes(self, routes: Iterable[str]) -> None:
        """Forget the windows of routes that no longer have a drift block."""
        keep = set(routes)
        for key in [k for k in self._windows if k[0] not in keep]:
            del self._windows[key]
