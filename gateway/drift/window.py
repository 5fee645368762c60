"""Rolling windows of live samples, one per (route, model version).

A window keeps the newest `size` rows and, with a `duration`, only rows younger than
it. Windows are per model version, not per variant, because drift is a property of the
data a model sees: when an alias moves to a new version, its samples start a new window
and the old one ages out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

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


class Bounded(Protocol):
    """A window `Windows` can hold: bounds it can be told to change."""

    size: int
    duration: float | None

    def resize(self, size: int, duration: float | None) -> None: ...


W = TypeVar("W", bound=Bounded)


class Windows(Generic[W]):
    """Every window of the worker, per (route, version), made by `make` on first use:
    the live samples' (`Window`) and the labeled predictions' (`labels.LabelWindow`)."""

    def __init__(self, make: Callable[[int, float | None], W]) -> None:
        self._make = make
        self._windows: dict[Key, W] = {}

    def get(self, key: Key, size: int, duration: float | None) -> W:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = self._make(size, duration)
        elif (window.size, window.duration) != (size, duration):
            window.resize(size, duration)
        return window

    def items(self) -> list[tuple[Key, W]]:
        return sorted(self._windows.items(), key=lambda item: item[0])

    def find(self, key: Key) -> W | None:
        return self._windows.get(key)

    def forget(self, key: Key) -> None:
        """Drop one window (its version stopped receiving traffic)."""
        self._windows.pop(key, None)

    def keep_routes(self, routes: Iterable[str]) -> None:
        """Forget the windows of routes that no longer have a drift block."""
        keep = set(routes)
        for key in [k for k in self._windows if k[0] not in keep]:
            del self._windows[key]
