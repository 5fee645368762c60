"""The lock-free histogram every request-path metric uses (rendered at scrape time)."""

from __future__ import annotations

from bisect import bisect_left

from gateway.observability.exposition import Bucket, Exemplar


class Histogram:
    """A lock-free histogram: one bisect and two additions per observation.

    Traced requests may leave an exemplar (their trace id) on the bucket their value
    fell in, the latest per bucket; OpenMetrics scrapes show them, so a latency spike
    on a dashboard links to a trace of it. Untraced requests never touch them.
    """

    __slots__ = ("bounds", "counts", "exemplars", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        # bucket index -> (trace id, observed value, Unix time); None until the first.
        self.exemplars: dict[int, tuple[str, float, float]] | None = None

    def observe(self, value: float) -> None:
        self.counts[bucket(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, value: float, times: int) -> None:
        """`times` observations of the same `value` (a stream's events read together)."""
        self.counts[bucket(self.bounds, value)] += times
        self.total += value * times

    def exemplar(self, value: float, trace_id: str, at: float) -> None:
        """Keep `trace_id` as the exemplar of the bucket `value` falls in."""
        exemplars = self.exemplars
        if exemplars is None:
            exemplars = self.exemplars = {}
        exemplars[bisect_left(self.bounds, value)] = (trace_id, value, at)

    def buckets(self) -> list[Bucket]:
        out: list[Bucket] = []
        exemplars = self.exemplars or {}
        running = 0
        for i, count in enumerate(self.counts):
            running += count
            bound = _fmt(self.bounds[i]) if i < len(self.bounds) else "+Inf"
            found = exemplars.get(i)
            if found is None:
                out.append((bound, running))
            else:
                trace_id, value, at = found
                out.append((bound, running, Exemplar({"trace_id": trace_id}, value, at)))
        return out


def bucket(bounds: tuple[float, ...], value: float) -> int:
    """`bisect_left(bounds, value)`, as a scan from the low end: request-path values fall
    in the first few buckets, and compiled this is a few native float compares where a
    bisect call measured ~1.5k instructions (interpreted it is ~0.1 us slower)."""
    i = 0
    n = len(bounds)
    while i < n and bounds[i] < value:
        i += 1
    return i


def _fmt(value: float) -> str:
    return repr(float(value))
