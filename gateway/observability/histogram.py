"""The lock-free histogram every request-path metric uses (rendered at scrape time)."""

from __future__ import annotations

from bisect import bisect_left


class Histogram:
    """A lock-free histogram: one bisect and two additions per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((_fmt(bound), running))
        running += self.counts[-1]
        out.append(("+Inf", running))
        return out


def _fmt(value: float) -> str:
    return repr(float(value))
