"""The drift worker's receiving side, over its real datagram socket: rows that come
before their route's config wait for it; every row that reaches no window is counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.drift import worker as worker_module
from gateway.drift.channel import (
    encode,
    encode_config,
    receiver_socket,
    sender_socket,
    worker_address,
)
from gateway.drift.worker import DriftWorker, WorkerOptions


def config(tmp_path: Path, *routes: str) -> bytes:
    return encode_config(
        [
            {"route": r, "protocol": "openai", "base": str(tmp_path), "drift": {"reference": "r"}}
            for r in routes
        ]
    )


def rows(route: str, n: int) -> list[bytes]:
    return [
        d for d, _ in encode(route, "champion", "3", [{"prompt_chars": float(i)} for i in range(n)])
    ]


class Rig:
    """A worker and its bound socket; `send` delivers datagrams, `receive` drains."""

    def __init__(self, tmp_path: Path) -> None:
        self.worker = DriftWorker(WorkerOptions(drift_dir=tmp_path / "drift"))
        self.address = worker_address(tmp_path / "drift")
        self.sock = receiver_socket(self.address)
        self.out = sender_socket()

    def send(self, *datagrams: bytes) -> None:
        for datagram in datagrams:
            self.out.sendto(datagram, self.address)
        self.worker.receive(self.sock)

    def received(self, route: str) -> int:
        return sum(w.received for (r, _), w in self.worker.windows.items() if r == route)

    def close(self) -> None:
        self.sock.close()
        self.out.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.close()


async def test_rows_before_their_config_wait_for_it(rig: Rig, tmp_path: Path) -> None:
    # A worker that just bound gets the gateway's rows before its next config datagram
    # (up to 2 s later): the demo's whole baseline was lost this way, counted nowhere.
    rig.send(*rows("support", 150))
    assert rig.received("support") == 0  # nothing to put them in yet
    rig.send(config(tmp_path, "support"))
    assert rig.received("support") == 150
    rig.send(*rows("support", 20))
    assert rig.received("support") == 170
    assert rig.worker.dropped == {}
    assert rig.worker.status()["held_rows"] == 0


async def test_rows_of_a_route_without_drift_are_dropped_and_counted(
    rig: Rig, tmp_path: Path
) -> None:
    rig.send(config(tmp_path, "support"))
    rig.send(*rows("other", 7), *rows("support", 5), b"not json", b'{"v": 99}')
    rig.send(config(tmp_path, "support"))  # the next config: "other" has no drift block
    assert rig.received("support") == 5
    assert rig.worker.dropped == {
        ("other", "3", "unknown_route"): 7,
        ("", "", "malformed"): 2,  # datagrams: rows of an unreadable one are unknown
    }
    assert {"route": "other", "version": "3", "reason": "unknown_route", "samples": 7} in (
        rig.worker.status()["dropped"]
    )


async def test_rows_waiting_for_a_config_are_bounded(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "HOLD_ROWS", 100)
    for _ in range(5):
        rig.send(*rows("support", 40))  # 200 rows, 100 held at most
    rig.send(config(tmp_path, "support"))
    dropped = rig.worker.dropped[("support", "3", "no_config")]
    assert dropped == 120  # whole datagrams, oldest first: 3 of 40 leave room
    assert rig.received("support") + dropped == 200
