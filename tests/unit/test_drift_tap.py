"""The tap (request path) and the sender (background): sampling, bounds, drops."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import pytest

from gateway.controlplane.policy.compile import compile_snapshot
from gateway.controlplane.policy.loader import LoadedPolicy, parse_policies
from gateway.dataplane.decide import Decision, RequestHead, decide
from gateway.dataplane.health import HealthRegistry
from gateway.drift.channel import (
    PROBE,
    Config,
    Labels,
    Rows,
    Unreadable,
    decode,
    receiver_socket,
    worker_address,
)
from gateway.drift.sender import SLICE, DriftSender
from gateway.drift.tap import DriftTap, NoTap
from gateway.observability.drift_metrics import DriftCounters
from gateway.observability.metrics import GatewayMetrics

POLICY = """apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - {name: champion, target: "models:/chat/3"}
backends:
  chat/3: {endpoints: ["http://127.0.0.1:9"]}
drift:
  reference: ref.csv
  sample: 0.5
---
apiVersion: switchyard/v1
kind: RoutingPolicy
route: plain
variants:
  - {name: a, endpoints: ["http://127.0.0.1:9"]}
"""


def next_message(receiver: socket.socket) -> Rows | Config | Labels | Unreadable:
    """The next datagram the worker would read, past the probes a sender sends before
    its config once a send was refused."""
    while (datagram := receiver.recv(65536)) == PROBE:
        pass
    return decode(datagram)


def decisions() -> tuple[list[LoadedPolicy], dict[str, Decision]]:
    policies, problems = parse_policies(POLICY, "p.yaml")
    assert not problems
    metrics = GatewayMetrics()
    snap = compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics))
    rng = random.Random(1)
    return policies, {r: decide(snap, RequestHead(r), rng) for r in ("chat", "plain")}


def test_no_tap_and_unsampled_routes_buffer_nothing() -> None:
    _, d = decisions()
    NoTap().offer(d["chat"], {})
    tap = DriftTap(10)
    tap.offer(d["chat"], {})  # not configured yet
    tap.configure({"chat": 1.0})
    tap.offer(d["plain"], {})
    assert len(tap) == 0


def test_sampling_rate_and_full_buffer_drops_and_counts() -> None:
    _, d = decisions()
    dropped: dict[tuple[str, str], int] = {}
    tap = DriftTap(100, rng=random.Random(3), dropped=dropped)
    tap.configure({"chat": 0.5})
    for _ in range(100):
        tap.offer(d["chat"], {"n": 1})
    assert 35 <= len(tap) <= 65
    tap.configure({"chat": 1.0})
    for _ in range(200):
        tap.offer(d["chat"], {"n": 1})
    assert len(tap) == 100
    assert dropped[("chat", "3")] > 100
    taken = tap.take()
    assert len(taken) == 100 and len(tap) == 0 and taken[0][0] is d["chat"]


def test_sender_extracts_and_sends_to_the_worker_socket(tmp_path: Path) -> None:
    policies, d = decisions()
    address = worker_address(tmp_path)
    receiver = receiver_socket(address)
    try:
        counters = DriftCounters()
        tap = DriftTap(1000, rng=random.Random(1), dropped=counters.buffer_full)
        sender = DriftSender(tap, address, counters)
        sender.configure(policies)
        config = next_message(receiver)
        assert isinstance(config, Config) and config.routes[0]["route"] == "chat"
        assert config.routes[0]["models"] == {"champion": "chat"}
        tap.configure({"chat": 1.0})
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi there"}]}
        for _ in range(5):
            tap.offer(d["chat"], body)
        assert sender.flush() == 5
        rows = next_message(receiver)
        assert isinstance(rows, Rows)
        assert (rows.route, rows.variant, rows.version) == ("chat", "champion", "3")
        assert rows.rows[0]["prompt_words"] == 2.0 and len(rows.rows) == 5
        assert counters.sent == {("chat", "3"): 5}
    finally:
        sender.close()
        receiver.close()


def test_sender_holds_samples_until_the_worker_is_up_and_sends_its_config_first(
    tmp_path: Path,
) -> None:
    # The quick start: the gateway samples before the drift worker (Python, pandas:
    # seconds) has bound its socket. Those samples used to be dropped, and so the
    # demo's whole baseline; now they wait, and the config goes before them.
    policies, d = decisions()
    counters = DriftCounters()
    tap = DriftTap(1000)
    address = worker_address(tmp_path)
    sender = DriftSender(tap, address, counters)
    sender.configure(policies)  # the config datagram is refused: nobody listens yet
    tap.configure({"chat": 1.0})
    for _ in range(7):
        tap.offer(d["chat"], {"messages": []})
    assert sender.flush() == 0
    assert sender.backlog_rows == 7 and counters.dropped == {} and counters.sent == {}
    receiver = receiver_socket(address)  # the worker is up
    try:
        assert sender.flush() == 7
        first, second = next_message(receiver), next_message(receiver)
        assert isinstance(first, Config) and first.routes[0]["route"] == "chat"
        assert isinstance(second, Rows) and len(second.rows) == 7
        assert counters.sent == {("chat", "3"): 7} and counters.dropped == {}
        assert sender.backlog_rows == 0
    finally:
        sender.close()
        receiver.close()


def test_the_backlog_keeps_the_newest_samples_and_counts_the_oldest(tmp_path: Path) -> None:
    policies, d = decisions()
    counters = DriftCounters()
    tap = DriftTap(1000)
    address = worker_address(tmp_path)
    sender = DriftSender(tap, address, counters, backlog=50)
    sender.configure(policies)
    tap.configure({"chat": 1.0})
    for flush in range(5):  # 5 datagrams of 20 rows, the flush's number in each row
        for _ in range(20):
            tap.offer(d["chat"], {"messages": [{"role": "user", "content": "x" * flush}]})
        assert sender.flush() == 0
    assert counters.dropped == {("chat", "3", "backlog_full"): 60}
    assert sender.backlog_rows == 40
    receiver = receiver_socket(address)
    try:
        assert sender.flush() == 40
        assert isinstance(next_message(receiver), Config)
        kept = [next_message(receiver) for _ in range(2)]
        chars = [row["prompt_chars"] for m in kept if isinstance(m, Rows) for row in m.rows]
        assert chars == [3.0] * 20 + [4.0] * 20  # the two newest flushes, in order
        assert counters.sent == {("chat", "3"): 40}
    finally:
        sender.close()
        receiver.close()


def test_sender_counts_drops_when_the_worker_falls_behind(tmp_path: Path) -> None:
    policies, d = decisions()
    address = worker_address(tmp_path)
    receiver = receiver_socket(address, buffer_bytes=4096)  # tiny queue, never read
    try:
        counters = DriftCounters()
        tap = DriftTap(100_000)
        sender = DriftSender(tap, address, counters, backlog=1000)
        sender.configure(policies)
        tap.configure({"chat": 1.0})
        sent = 0
        for _ in range(50):  # far more than the queue holds: sends fail with EAGAIN
            for _ in range(200):
                tap.offer(d["chat"], {"messages": [{"role": "user", "content": "x " * 50}]})
            sent += sender.flush()
        lost = counters.dropped[("chat", "3", "backlog_full")]
        assert lost > 0 and 0 < sender.backlog_rows <= 1000
        assert sent + lost + sender.backlog_rows == 50 * 200
        waiting = sender.backlog_rows
        sender.close()  # what still waits is lost with the process, and counted
        assert counters.dropped[("chat", "3", "shutdown")] == waiting
        assert sent + sum(counters.dropped.values()) == 50 * 200
    finally:
        receiver.close()


def test_samples_of_a_route_whose_drift_block_went_away_are_counted(tmp_path: Path) -> None:
    policies, d = decisions()
    counters = DriftCounters()
    tap = DriftTap(1000)
    sender = DriftSender(tap, worker_address(tmp_path), counters)
    sender.configure(policies)
    tap.configure({"chat": 1.0})
    for _ in range(3):
        tap.offer(d["chat"], {"messages": []})
    sender.configure([p for p in policies if p.policy.drift is None])  # reloaded without
    assert sender.flush() == 0
    sender.close()
    assert counters.dropped == {("chat", "3", "route_removed"): 3}


def test_datagram_socket_family_is_unix() -> None:
    sock = receiver_socket(b"\0switchyard-drift-test-family")
    try:
        assert sock.family == socket.AF_UNIX
    finally:
        sock.close()


def _listened_to(
    tmp_path: Path,
) -> tuple[dict[str, Decision], DriftCounters, DriftTap, DriftSender, socket.socket]:
    """A sender sampling every `chat` request, and the worker's socket it sends to."""
    policies, d = decisions()
    counters = DriftCounters()
    tap = DriftTap(10_000)
    address = worker_address(tmp_path)
    receiver = receiver_socket(address)
    sender = DriftSender(tap, address, counters)
    sender.configure(policies)
    tap.configure({"chat": 1.0})
    return d, counters, tap, sender, receiver


async def test_a_flush_lets_the_event_loop_run_between_slices_and_loses_nothing(
    tmp_path: Path,
) -> None:
    # What the sender's loop flushes with: at most SLICE extractions per turn of the
    # loop, so a big flush does not hold every connection of the worker at once.
    d, counters, tap, sender, receiver = _listened_to(tmp_path)
    total = 5 * SLICE + 3
    for n in range(total):
        tap.offer(d["chat"], {"messages": [{"role": "user", "content": "x" * n}]})
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.get_running_loop().create_task(count_turns())
    try:
        assert await sender.flush_sliced() == total
        # The loop turned between the six slices: 5 turns, the first of which started
        # the counter.
        assert turns >= 4
        rows: list[float] = []
        while len(rows) < total:
            message = next_message(receiver)
            if isinstance(message, Rows):
                rows += [row["prompt_chars"] for row in message.rows]
        assert rows == [float(n) for n in range(total)]  # every sample, in order
        assert counters.sent == {("chat", "3"): total} and counters.dropped == {}
    finally:
        counter.cancel()
        sender.close()
        receiver.close()


async def test_a_flush_stopped_between_slices_keeps_the_rest(tmp_path: Path) -> None:
    d, counters, tap, sender, receiver = _listened_to(tmp_path)
    total = 3 * SLICE
    for _ in range(total):
        tap.offer(d["chat"], {"messages": [{"role": "user", "content": "x"}]})
    flushing = asyncio.get_running_loop().create_task(sender.flush_sliced())
    await asyncio.sleep(0)  # the first slice is extracted, then the loop turns
    flushing.cancel()  # as the sender's task is cancelled when the gateway stops
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert len(tap) == 0 and sender.backlog_rows == total  # taken and encoded, not lost
    try:
        assert sender.flush() == total  # the final flush of a stop sends them
        assert counters.sent == {("chat", "3"): total}
    finally:
        sender.close()
        receiver.close()
