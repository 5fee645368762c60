"""Request counters a simulator keeps so tests can see what reached the backend."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Final, Literal, Protocol

Outcome = Literal["completed", "cancelled", "aborted"]
"""How an exchange ended: answered in full, abandoned by the client, or cut by a fault."""

# Clients choose paths, so the per-path table is bounded: a scan of random URLs must not
# grow a long-running load-test backend without limit.
MAX_PATHS: Final = 64
OTHER_PATHS: Final = "(other)"
# The last requests' W3C trace context, so a test can see what a proxy propagated.
MAX_TRACES: Final = 256


class StatsSection(Protocol):
    """More counters a simulator keeps (a model of its engine), under their own key."""

    def snapshot(self) -> dict[str, object]: ...
    def reset(self) -> None: ...


class SimStats:
    """Counters for one simulator instance, exposed at `GET /sim/stats`.

    `started` counts requests the simulator began to answer (pipelined requests are
    counted when their turn comes). Every started request ends exactly once as
    `completed` (the whole response was written), `cancelled` (the client closed the
    connection first; the simulator stops producing) or `aborted` (a fault such as
    `x-sim-cut-after` or `x-sim-garbage` closed it on purpose). `in_flight` is a live
    gauge and survives `reset()`, so a reset during a test never drives it negative.
    `traces` holds the `traceparent` and `tracestate` of the last requests that carried
    one (bounded), with their path and `x-request-id`. `sections` are a simulator's own
    counters (the OpenAI simulator's `prefix_cache`), shown and reset with the rest.
    """

    __slots__ = (
        "_in_flight_by_path",
        "aborted",
        "by_path",
        "cancelled",
        "completed",
        "sections",
        "started",
        "traces",
    )

    def __init__(self) -> None:
        self.started = 0
        self.completed = 0
        self.cancelled = 0
        self.aborted = 0
        self.by_path: dict[str, int] = {}
        self._in_flight_by_path: dict[str, int] = {}
        self.traces: deque[dict[str, str]] = deque(maxlen=MAX_TRACES)
        self.sections: dict[str, StatsSection] = {}

    @property
    def in_flight(self) -> int:
        """Requests started and not yet ended."""
        return sum(self._in_flight_by_path.values())

    def in_flight_for(self, paths: Iterable[str]) -> int:
        """Requests in flight on the given paths (for example the inference endpoints)."""
        live = self._in_flight_by_path
        return sum(live.get(path, 0) for path in paths)

    def begin(self, path: str) -> str:
        """Count a started request; returns the key to pass to `end`."""
        key = path if path in self.by_path or len(self.by_path) < MAX_PATHS else OTHER_PATHS
        self.started += 1
        self.by_path[key] = self.by_path.get(key, 0) + 1
        self._in_flight_by_path[key] = self._in_flight_by_path.get(key, 0) + 1
        return key

    def saw_headers(self, path: str, headers: Mapping[str, str]) -> None:
        """Keep the trace context of a request, if it carried one."""
        parent = headers.get("traceparent")
        if parent is not None:
            self.traces.append(
                {
                    "path": path,
                    "traceparent": parent,
                    "tracestate": headers.get("tracestate", ""),
                    "request_id": headers.get("x-request-id", ""),
                }
            )

    def end(self, key: str, outcome: Outcome) -> None:
        """Count how the request started under `key` ended."""
        live = self._in_flight_by_path
        remaining = live.get(key, 0) - 1
        if remaining > 0:
            live[key] = remaining
        else:
            live.pop(key, None)
        if outcome == "completed":
            self.completed += 1
        elif outcome == "cancelled":
            self.cancelled += 1
        else:
            self.aborted += 1

    def reset(self) -> None:
        """Zero the counters (the in-flight gauge stays live)."""
        self.started = self.completed = self.cancelled = self.aborted = 0
        # Keys of requests still in flight stay so their `end` finds them.
        self.by_path = {}
        self.traces.clear()
        for section in self.sections.values():
            section.reset()

    def snapshot(self) -> dict[str, object]:
        """A JSON-ready copy of the counters."""
        return {
            "started": self.started,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "aborted": self.aborted,
            "in_flight": self.in_flight,
            "by_path": dict(self.by_path),
            "traces": list(self.traces),
            **{name: section.snapshot() for name, section in self.sections.items()},
        }
