"""The drift worker's ledger of senders: sequence gaps counted as lost, per sender, also
across a worker restart; late and duplicate datagrams never count twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.drift import senders as senders_module
from gateway.drift.channel import Head, Stream, encode
from gateway.drift.senders import SENDERS_FILE, Ledger
from gateway.drift.worker import DriftWorker, WorkerOptions


def head(sender: str, seq: int, before: int) -> Head:
    return Head(sender, seq, before)


def test_in_order_gaps_late_and_duplicates() -> None:
    ledger = Ledger(None)
    assert ledger.observe(head("a", 0, 0), 10, 1.0) == "new"
    assert ledger.observe(head("a", 1, 10), 10, 1.1) == "in_order"
    # Datagrams 2 and 3 (rows 20..49) never come.
    assert ledger.observe(head("a", 4, 50), 5, 1.2) == "gap"
    assert ledger.observe(head("a", 3, 35), 15, 1.3) == "late"
    assert ledger.observe(head("a", 4, 50), 5, 1.4) == "duplicate"
    assert ledger.observe(head("a", 1, 10), 10, 1.5) == "duplicate"
    sender = ledger.get("a")
    assert sender is not None
    assert (sender.received, sender.rows_received) == (3, 25)
    assert (sender.lost, sender.rows_lost, sender.late, sender.duplicates) == (2, 30, 1, 2)
    # Every row sent up to the last datagram is received or lost, exactly once.
    assert sender.next_rows - sender.from_rows == sender.rows_received + sender.rows_lost
    assert ledger.totals() == {
        "received": 3,
        "lost": 2,
        "late": 1,
        "duplicate": 2,
        "rows_lost": 30,
    }


def test_a_sender_never_seen_starts_where_it_is() -> None:
    # A worker that starts with no saved state cannot know what went before: a gateway
    # at datagram 1000 is not 1000 datagrams lost.
    ledger = Ledger(None)
    assert ledger.observe(head("b", 1000, 20_000), 7, 1.0) == "new"
    sender = ledger.get("b")
    assert sender is not None and sender.lost == 0
    assert sender.view()["from"] == {"seq": 1000, "rows": 20_000}


def test_the_ledger_continues_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / SENDERS_FILE
    first = Ledger(path)
    first.observe(head("a", 0, 0), 10, 1.0)
    first.observe(head("a", 1, 10), 10, 1.1)
    first.save()
    # The worker is down while the sender sends datagrams 2..4 (30 rows) into nothing.
    second = Ledger(path)
    assert second.observe(head("a", 5, 50), 10, 9.0) == "gap"
    sender = second.get("a")
    assert sender is not None
    assert (sender.lost, sender.rows_lost, sender.received) == (3, 30, 1)
    assert sender.view()["from"] == {"seq": 2, "rows": 20}


def test_an_unreadable_saved_ledger_is_ignored(tmp_path: Path) -> None:
    (tmp_path / SENDERS_FILE).write_text("{not json")
    ledger = Ledger(tmp_path / SENDERS_FILE)
    assert ledger.observe(head("a", 3, 30), 1, 1.0) == "new"


def test_senders_are_bounded_and_idle_ones_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(senders_module, "MAX_SENDERS", 3)
    ledger = Ledger(None)
    for i, name in enumerate("abcd"):
        ledger.observe(head(name, 0, 0), 1, float(i))
    assert {s.id for s in ledger} == {"b", "c", "d"}  # the least recently heard went
    ledger.forget_idle(3.0 + senders_module.FORGET_AFTER - 0.5)
    assert {s.id for s in ledger} == {"d"}


def test_live_configs_count_recent_senders() -> None:
    ledger = Ledger(None)
    for name, at in (("a", 0.0), ("b", 8.0), ("c", 9.0)):
        ledger.observe(head(name, 0, 0), 0, at)
        ledger.configured(name, "old" if name == "a" else "new", at)
    assert ledger.live_configs(10.0, ttl=5.0) == {"new": 2}
    assert ledger.live_configs(10.0, ttl=60.0) == {"old": 1, "new": 2}
    assert ledger.configured("b", "new", 10.0) is False  # the same config again
    assert ledger.configured("b", "newer", 11.0) is True


async def test_a_restarted_worker_counts_what_was_sent_while_it_was_down(tmp_path: Path) -> None:
    drift = tmp_path / "drift"
    stream = Stream()
    [(payload, n)] = list(encode("support", "champion", "1", [{"x": 1.0}] * 4))

    first = DriftWorker(WorkerOptions(drift_dir=drift))
    now = time.time()
    for _ in range(3):
        first.accept(stream.datagram(payload, n), now)
    first.publish()  # every second; at exit too
    for _ in range(2):
        stream.datagram(payload, n)  # sent while no worker listened: gone
    second = DriftWorker(WorkerOptions(drift_dir=drift))
    second.accept(stream.datagram(payload, n), now + 2)
    status = second.status()
    assert status["senders"]["datagrams"]["lost"] == 2
    assert {"route": "", "version": "", "reason": "lost", "samples": 8} in status["dropped"]
