"""What a scored picker learns about its pool, kept across snapshots.

`PoolState` holds, per pool (a route's variant), the endpoint slots (bit positions that
name endpoints by backend across reloads), the prefix table (block hash -> bit mask of
the endpoints sent that prefix, two dict generations as an approximate LRU), the
session table (session key -> slot and expiry, an LRU) and the context lengths the
backends reported. `PickerPools` is their get-or-create registry, held by the
`HealthRegistry` like the flow queues. See `gateway.dataplane.scorers` for how the
picker uses them. A native module (compiled with the request path).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Final

# More endpoints than this in a pool's slot table (endpoints come and go: Kubernetes
# pods) and the table starts over: its bit masks would grow without bound.
MAX_SLOTS: Final = 64


class PoolState:
    """What a pool's picker learns, shared by every snapshot (like `EndpointState`):
    endpoint slots, the prefix table, the session table and the context lengths read
    from the backends. Slots (bit positions) name endpoints by backend across reloads."""

    def __init__(self, table_blocks: int = 32768, max_sessions: int = 100_000) -> None:
        self.slot_of: dict[str, int] = {}
        self.lengths: list[int] = []  # per slot: max_model_len the backend reported, 0 unknown
        self.young: dict[int, int] = {}  # block hash -> bit mask of slots sent that prefix
        self.old: dict[int, int] = {}
        self.half = max(1, table_blocks // 2)
        self.sessions: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self.max_sessions = max_sessions
        # Issued session tokens this pool's requests brought that verified, and the
        # variant each names: a conversation's later turns skip the HMAC (a dict read
        # instead of ~2 us). Exact bytes: only a token once verified can match.
        self.verified: dict[bytes, str] = {}
        self.rng = random.Random()

    def configure(self, table_blocks: int, max_sessions: int) -> None:
        """Bounds from the policy now serving (a reload may change them)."""
        self.half = max(1, table_blocks // 2)
        self.max_sessions = max_sessions
        while len(self.sessions) > max_sessions:
            self.sessions.popitem(last=False)

    def slots(self, backends: tuple[str, ...]) -> tuple[int, ...]:
        """The slot of each backend, given new ones as needed; past MAX_SLOTS the tables
        start over (stale bits would otherwise name whichever backend got a freed slot)."""
        if len(self.slot_of) + sum(1 for b in backends if b not in self.slot_of) > MAX_SLOTS:
            self.slot_of = {}
            self.lengths = []
            self.young = {}
            self.old = {}
            self.sessions.clear()
        for backend in backends:
            if backend not in self.slot_of:
                self.slot_of[backend] = len(self.slot_of)
                self.lengths.append(0)
        return tuple(self.slot_of[b] for b in backends)

    def blocks(self) -> int:
        return len(self.young) + len(self.old)

    def depths(self, hashes: list[int]) -> dict[int, int]:
        """slot -> how many leading blocks of `hashes` that endpoint holds (slots with
        none are left out). Blocks found in the old generation move to the young one:
        a prefix in use stays."""
        found: dict[int, int] = {}
        young = self.young
        old = self.old
        alive = -1
        k = 0
        for h in hashes:
            mask = young.get(h)
            if mask is None:
                mask = old.get(h, 0)
                if mask:
                    self._keep(h, mask)
                    young = self.young
                    old = self.old
            mask &= alive
            if mask != alive and k > 0:
                _mark(found, alive & ~mask, k)
            alive = mask
            if not mask:
                return found
            k += 1
        _mark(found, alive, k)
        return found

    def record(self, hashes: list[int], slot: int, start: int = 0) -> None:
        """The endpoint in `slot` was sent this prefix: it holds every block of it now.
        `start`: the leading blocks `depths` found it holding already (and kept)."""
        bit = 1 << slot
        young = self.young
        for k in range(start, len(hashes)):
            h = hashes[k]
            mask = young.get(h)
            if mask is not None and mask & bit:
                continue
            if mask is None:
                mask = self.old.get(h, 0)
            self._keep(h, mask | bit)
            young = self.young

    def _keep(self, h: int, mask: int) -> None:
        young = self.young
        young[h] = mask
        if len(young) >= self.half:
            # A new generation: the older one goes; what was used since stays.
            self.old = young
            self.young = {}


def _mark(found: dict[int, int], bits: int, depth: int) -> None:
    while bits:
        low = bits & -bits
        found[low.bit_length() - 1] = depth
        bits ^= low


class PickerPools:
    """Get-or-create store of the pools' learnt state by (route, variant): it outlives
    snapshots, so a reload keeps what the picker knows."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str], PoolState] = {}

    def pool(self, route: str, variant: str, table_blocks: int, max_sessions: int) -> PoolState:
        found = self._pools.get((route, variant))
        if found is None:
            found = self._pools[(route, variant)] = PoolState(table_blocks, max_sessions)
        else:
            found.configure(table_blocks, max_sessions)
        return found

    def pools(self) -> dict[tuple[str, str], PoolState]:
        return dict(self._pools)
