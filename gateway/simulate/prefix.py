"""A vLLM engine's automatic prefix caching and prefill time, modelled cheaply.

The prompt's simulated tokens (whitespace words, as everywhere in the simulators) are cut
into blocks of `block_tokens`; each block's hash is chained to the blocks before it, so
it names the whole prefix up to its end, as vLLM's block hashes do. The engine keeps the
last `capacity` blocks it computed (least recently used go first). A request's leading
blocks found there are hits and cost nothing; the rest of its prompt is prefilled at
`tokens_per_s`, one request after another (prefill is compute-bound: requests share the
engine), so time to first token is the wait for the prefill work queued before it plus
its own uncached tokens / rate. `snapshot()` is the `prefix_cache` section of
`GET /sim/stats`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """One simulated engine's prefix cache and prefill queue."""

    def __init__(self, capacity: int, block_tokens: int, tokens_per_s: float) -> None:
        if capacity < 0 or block_tokens < 1 or tokens_per_s < 0:
            raise ValueError("prefix cache: capacity >= 0, block tokens >= 1, rate >= 0")
        self.capacity = capacity
        self.block_tokens = block_tokens
        self.tokens_per_s = tokens_per_s
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._free_at = 0.0  # when the prefill work queued so far is done
        self.reset()

    def reset(self) -> None:
        """Zero the counters; what is cached stays (as a real engine's would)."""
        self.requests = 0
        self.hit_blocks = 0
        self.miss_blocks = 0
        self.hit_tokens = 0
        self.miss_tokens = 0
        self.prefill_seconds = 0.0

    def admit(self, texts: Sequence[str], now: float) -> float:
        """Account for one prompt arriving at `now`; seconds until its prefill is done."""
        words = [word for text in texts for word in text.split()]
        size = self.block_tokens
        full = len(words) // size
        hits = 0
        h = 0
        hashes: list[int] = []
        for k in range(full):
            h = hash((h, *words[k * size : (k + 1) * size]))
            hashes.append(h)
        blocks = self._blocks
        for h in hashes:
            if h not in blocks:
                break
            blocks.move_to_end(h)
            hits += 1
        for h in hashes[hits:]:
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
        cached = hits * size
        uncached = len(words) - cached
        self.requests += 1
        self.hit_blocks += hits
        self.miss_blocks += full - hits
        self.hit_tokens += cached
        self.miss_tokens += uncached
        if not self.tokens_per_s:
            return 0.0
        work = uncached / self.tokens_per_s
        self.prefill_seconds += work
        self._free_at = max(self._free_at, now) + work
        return self._free_at - now

    def snapshot(self) -> dict[str, object]:
        looked = self.hit_tokens + self.miss_tokens
        return {
            "requests": self.requests,
            "hit_blocks": self.hit_blocks,
            "miss_blocks": self.miss_blocks,
            "hit_tokens": self.hit_tokens,
            "miss_tokens": self.miss_tokens,
            "hit_rate": round(self.hit_tokens / looked, 4) if looked else 0.0,
            "cached_blocks": len(self._blocks),
            "capacity_blocks": self.capacity,
            "block_tokens": self.block_tokens,
            "prefill_tokens_per_s": self.tokens_per_s,
            "prefill_seconds": round(self.prefill_seconds, 6),
        }
