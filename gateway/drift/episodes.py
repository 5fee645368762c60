"""Drift episodes: hysteresis, so one stretch of drift acts once, then a cooldown.

An episode of a (route, version) begins at the first evaluation that drifts and ends
after `clear_after` evaluations in a row that do not. Its actions (save the window,
Kubeflow run, webhook) run once: an action that failed is tried again at the next
evaluation while the episode lasts (the Kubeflow call is idempotent by the episode's
key, so a retry never makes a second run), an action that succeeded never again. A new
episode may act only `cooldown` seconds after the previous one first acted.

The state is saved to a file after every change, so a restarted worker continues the
episode instead of acting again.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.drift.status import write_json

Key = tuple[str, str]  # (route, version)
Verdict = Literal["act", "hold", "cooldown", "calm", "ended"]

log = logging.getLogger("switchyard.drift")


@dataclass(slots=True)
class Episode:
    """One stretch of drift of one route and version."""

    id: str
    started_at: float
    acted_at: float | None = None  # first time its actions ran
    done: list[str] = field(default_factory=list)  # actions that succeeded
    calm: int = 0  # evaluations in a row without drift
    window_uri: str | None = None
    run_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    suppressed: bool = False  # began within the cooldown (counted once)


@dataclass(slots=True)
class _State:
    episode: Episode | None = None
    last_acted_at: float | None = None  # when the latest episode first acted
    count: int = 0  # episodes begun


def episode_id(route: str, version: str, started_at: float, kind: str = "") -> str:
    """A stable key for one episode (the idempotency key of its actions); `kind` tells
    apart the episodes of the retrain triggers begun at the same time as a drift one."""
    raw = f"{route}\n{version}\n{started_at:.3f}".encode()
    if kind:
        raw += f"\n{kind}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


class Episodes:
    """Episode state of every window, persisted in `path` (None: memory only); `kind`
    names what the episodes are of (empty: data drift; else a retrain trigger)."""

    def __init__(self, path: Path | None, kind: str = "") -> None:
        self.path = path
        self.kind = kind
        self._states: dict[Key, _State] = {}
        if path is not None:
            self._load(path)

    def observe(
        self, key: Key, drifted: bool, now: float, *, cooldown: float, clear_after: int
    ) -> tuple[Verdict, Episode | None]:
        """Record one evaluation; say whether the episode's actions should run now."""
        state = self._states.setdefault(key, _State())
        episode = state.episode
        if not drifted:
            if episode is None:
                return "calm", None
            episode.calm += 1
            if episode.calm >= clear_after:
                state.episode = None
                self._save()
                return "ended", episode
            self._save()
            return "hold", episode
        if episode is None:
            episode = state.episode = Episode(episode_id(*key, now, self.kind), now)
            state.count += 1
        episode.calm = 0
        cooling = state.last_acted_at is not None and now - state.last_acted_at < cooldown
        if episode.acted_at is None and cooling:
            self._save()
            return "cooldown", episode
        self._save()
        return "act", episode

    def acted(self, key: Key, episode: Episode, now: float) -> None:
        """The episode's actions ran (some may have failed: see `Episode.done`)."""
        state = self._states.setdefault(key, _State())
        if episode.acted_at is None:
            episode.acted_at = now
            state.last_acted_at = now
        self._save()

    def current(self, key: Key) -> Episode | None:
        state = self._states.get(key)
        return state.episode if state is not None else None

    def count(self, key: Key) -> int:
        state = self._states.get(key)
        return state.count if state is not None else 0

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            f"{route}\n{version}": {
                "episode": asdict(s.episode) if s.episode is not None else None,
                "last_acted_at": s.last_acted_at,
                "count": s.count,
            }
            for (route, version), s in self._states.items()
        }
        try:
            write_json(self.path, data)
        except OSError as exc:
            log.warning("cannot save drift episodes to %s: %s", self.path, exc)

    def _load(self, path: Path) -> None:
        try:
            data = orjson.loads(path.read_bytes())
            for raw_key, entry in data.items():
                route, _, version = raw_key.partition("\n")
                episode = entry.get("episode")
                self._states[(route, version)] = _State(
                    Episode(**episode) if isinstance(episode, dict) else None,
                    entry.get("last_acted_at"),
                    int(entry.get("count", 0)),
                )
        except FileNotFoundError:
            return  # a first start
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable drift episodes file %s: %s", path, exc)
