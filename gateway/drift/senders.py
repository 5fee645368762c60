"""The drift worker's ledger of its senders: what each gateway process sent, and lost.

Every datagram carries its sender's id, its number in that sender's stream and the
rows the sender sent before it (`channel.Stream`). A number past the next expected one
means datagrams went missing between the two: lost on the network, dropped from a full
receive queue (UDP never tells the sender), or sent while no worker listened. The
ledger counts them, and the rows in them, per sender. A missing datagram that turns up
after all (UDP may reorder; rare on one network) is `late` and a number seen before is
a `duplicate`: neither is taken, so every row sent is counted once, as received or as
lost, and the counters only grow (they are Prometheus counters).

A restarted worker continues the ledger from the state its predecessor saved in the
drift folder (every second, and at exit), so datagrams sent while no worker listened
count as lost too. After a crash that state is up to a second old: datagrams the dead
worker took in its last second count as lost as well (their rows died with its
windows either way). A sender the ledger never saw starts it at its first datagram.

The ledger also holds the config each sender sent last and when, from which the
worker derives the routes it watches (see `DriftWorker`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.drift.channel import Head
from gateway.drift.status import write_json

log = logging.getLogger("switchyard.drift")
SENDERS_FILE = "senders.json"
# A sender that sent nothing for this long is forgotten (a gateway process restarts
# with a new id, so old ids would only pile up).
FORGET_AFTER = 3600.0
MAX_SENDERS = 4096  # beyond: the least recently heard is forgotten
MAX_MISSING = 4096  # missing numbers remembered per sender (for late arrivals)

Arrival = Literal["new", "in_order", "gap", "late", "duplicate"]


@dataclass(slots=True)
class Sender:
    """What the worker knows of one gateway process's stream."""

    id: str
    next_seq: int  # the number expected next
    next_rows: int  # rows the sender had sent before that datagram
    from_seq: int  # counting started here (this worker's first datagram, or saved state)
    from_rows: int
    last_seen: float
    received: int = 0  # datagrams
    rows_received: int = 0
    lost: int = 0
    rows_lost: int = 0
    late: int = 0
    duplicates: int = 0
    missing: set[int] = field(default_factory=set)
    config: str | None = None  # digest of the last config it sent
    config_at: float = 0.0  # when that config came (its liveness)

    def view(self) -> dict[str, Any]:
        return {
            "datagrams": {
                "received": self.received,
                "lost": self.lost,
                "late": self.late,
                "duplicate": self.duplicates,
            },
            "rows": {"received": self.rows_received, "lost": self.rows_lost},
            "from": {"seq": self.from_seq, "rows": self.from_rows},
            "next": {"seq": self.next_seq, "rows": self.next_rows},
            "last_seen": self.last_seen,
            "config": self.config,
            "config_at": self.config_at or None,
        }


class Ledger:
    """Every sender's stream as the worker saw it; persisted in `path` (None: memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._senders: dict[str, Sender] = {}
        if path is not None:
            self._load(path)

    def observe(self, head: Head, rows: int, now: float) -> Arrival:
        """Account for one datagram carrying `rows` rows; `late` and `duplicate` mean:
        do not take its rows (counted as lost before, or taken before)."""
        sender = self._senders.get(head.sender)
        if sender is None:
            sender = self._senders[head.sender] = Sender(
                head.sender, head.seq, head.rows_before, head.seq, head.rows_before, now
            )
            arrival: Arrival = "new"
            if len(self._senders) > MAX_SENDERS:
                self._evict()
        elif head.seq == sender.next_seq:
            arrival = "in_order"
        elif head.seq > sender.next_seq:
            arrival = "gap"
            sender.lost += head.seq - sender.next_seq
            sender.rows_lost += max(0, head.rows_before - sender.next_rows)
            sender.missing.update(range(max(sender.next_seq, head.seq - MAX_MISSING), head.seq))
            if len(sender.missing) > MAX_MISSING:
                sender.missing = set(sorted(sender.missing)[-MAX_MISSING:])
        elif head.seq in sender.missing:
            sender.missing.discard(head.seq)
            sender.late += 1
            sender.last_seen = max(sender.last_seen, now)
            return "late"
        else:
            sender.duplicates += 1
            sender.last_seen = max(sender.last_seen, now)
            return "duplicate"
        sender.next_seq = head.seq + 1
        sender.next_rows = head.rows_before + rows
        sender.received += 1
        sender.rows_received += rows
        sender.last_seen = max(sender.last_seen, now)
        return arrival

    def configured(self, sender_id: str, digest: str, now: float) -> bool:
        """Record the config a sender sent (after `observe`); True if it is another
        config than the sender's last one."""
        sender = self._senders.get(sender_id)
        if sender is None:
            return False
        changed = sender.config != digest
        sender.config, sender.config_at = digest, now
        return changed

    def live_configs(self, now: float, ttl: float) -> dict[str, int]:
        """Config digest -> senders whose config came within `ttl` seconds."""
        live: dict[str, int] = {}
        for sender in self._senders.values():
            if sender.config is not None and now - sender.config_at <= ttl:
                live[sender.config] = live.get(sender.config, 0) + 1
        return live

    def forget_idle(self, now: float) -> None:
        for key in [k for k, s in self._senders.items() if now - s.last_seen > FORGET_AFTER]:
            del self._senders[key]

    def _evict(self) -> None:
        oldest = min(self._senders.values(), key=lambda s: s.last_seen)
        del self._senders[oldest.id]

    def __iter__(self) -> Iterator[Sender]:
        return iter(self._senders.values())

    def get(self, sender_id: str) -> Sender | None:
        return self._senders.get(sender_id)

    def totals(self) -> dict[str, int]:
        """Datagrams and rows, received and lost, over every sender."""
        out = {"received": 0, "lost": 0, "late": 0, "duplicate": 0, "rows_lost": 0}
        for s in self._senders.values():
            out["received"] += s.received
            out["lost"] += s.lost
            out["late"] += s.late
            out["duplicate"] += s.duplicates
            out["rows_lost"] += s.rows_lost
        return out

    # Persistence ----------------------------------------------------------------------

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            s.id: {"seq": s.next_seq, "rows": s.next_rows, "last_seen": s.last_seen}
            for s in self._senders.values()
        }
        try:
            write_json(self.path, data)
        except OSError as exc:
            log.warning("cannot save the drift senders to %s: %s", self.path, exc)

    def _load(self, path: Path) -> None:
        try:
            data = orjson.loads(path.read_bytes())
            for sender_id, entry in data.items():
                seq, rows = int(entry["seq"]), int(entry["rows"])
                self._senders[str(sender_id)] = Sender(
                    str(sender_id), seq, rows, seq, rows, float(entry.get("last_seen", 0.0))
                )
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring unreadable drift senders file %s: %s", path, exc)
            self._senders.clear()
