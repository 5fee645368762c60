"""The drift worker's receiving side, over its real datagram socket: rows that come
before their route's config wait for it; every row that reaches no window is counted;
configs from many gateway processes are idempotent and a rollout's two versions do not
fight over a route."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.drift import worker as worker_module
from gateway.drift.channel import (
    ChannelKey,
    Stream,
    encode,
    encode_config,
    receiver_socket,
    sender_socket,
    worker_address,
)
from gateway.drift.worker import DriftWorker, WorkerOptions

Payload = tuple[bytes, int]  # a message without its head, and the rows in it


def entry(tmp_path: Path, route: str, **drift: Any) -> dict[str, Any]:
    block = {"reference": "r", **drift}
    return {"route": route, "protocol": "openai", "base": str(tmp_path), "drift": block}


def config(tmp_path: Path, *routes: str, **drift: Any) -> Payload:
    return encode_config([entry(tmp_path, r, **drift) for r in routes]), 0


def rows(route: str, n: int) -> list[Payload]:
    return list(encode(route, "champion", "3", [{"prompt_chars": float(i)} for i in range(n)]))


class Rig:
    """A worker and its bound socket; `send` delivers one gateway process's numbered
    datagrams (another process: another `Stream`), `receive` drains."""

    def __init__(self, tmp_path: Path, key: ChannelKey | None = None) -> None:
        source = "test" if key is not None else ""
        options = WorkerOptions(drift_dir=tmp_path / "drift", key=key, key_source=source)
        self.worker = DriftWorker(options)
        self.address = worker_address(tmp_path / "drift")
        self.sock = receiver_socket(self.address)
        self.out = sender_socket()
        self.stream = Stream(key=key)  # a gateway process given the worker's secret

    def send(self, *payloads: Payload, stream: Stream | None = None) -> None:
        for payload, n in payloads:
            self.raw((stream or self.stream).datagram(payload, n))
        self.worker.receive(self.sock)

    def raw(self, datagram: bytes) -> None:
        self.out.sendto(datagram, self.address)

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
    rig.send(*rows("other", 7), *rows("support", 5))
    for datagram in (b"not json", b'{"v": 3, "route": "support"}', b'{"v": 2, "route": "x"}'):
        rig.raw(datagram)
    rig.send(config(tmp_path, "support"))  # the next config: "other" has no drift block
    assert rig.received("support") == 5
    assert rig.worker.dropped == {
        ("other", "3", "unknown_route"): 7,
        ("", "", "malformed"): 2,  # datagrams: rows of an unreadable one are unknown
        ("", "", "wire_version"): 1,  # another release's gateway: said as such
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


def window_ids(rig: Rig) -> dict[tuple[str, str], int]:
    return {key: id(window) for key, window in rig.worker.windows.items()}


async def test_the_same_config_from_many_gateway_processes_changes_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    # A fleet: every process of every replica sends the same config every 2 s.
    fleet = [Stream() for _ in range(6)]
    rig.send(config(tmp_path, "support"), stream=fleet[0])
    rig.send(*rows("support", 30), stream=fleet[0])
    routes, windows = rig.worker.routes, window_ids(rig)
    rig.worker.references["support"] = reference = object()  # type: ignore[assignment]
    for _ in range(3):
        for stream in fleet:
            rig.send(config(tmp_path, "support"), stream=stream)
    assert rig.worker.routes is routes  # not even rebuilt
    assert window_ids(rig) == windows and rig.received("support") == 30
    assert rig.worker.references["support"] is reference  # not loaded again
    status = rig.worker.status()
    assert status["senders"]["live"] == 6
    [(_, heard)] = status["configs"]["live"].items()
    assert heard["senders"] == 6
    assert status["configs"]["conflicts"] == {}


async def test_during_a_rollout_the_newest_config_wins_and_nothing_flaps(
    rig: Rig, tmp_path: Path
) -> None:
    old, new = Stream(), Stream()
    rig.send(config(tmp_path, "support", window={"size": 100}), stream=old)
    rig.send(*rows("support", 20), stream=old)
    windows = window_ids(rig)
    # A replica on the new policy: a bigger window (not a reset: the rows stay).
    rig.send(config(tmp_path, "support", window={"size": 500}), stream=new)
    assert rig.worker.routes["support"].spec.window.size == 500
    # The old replica keeps sending its config until it is replaced: it must not take
    # the route back (it used to: the last config won, and windows flapped with it).
    for _ in range(3):
        rig.send(config(tmp_path, "support", window={"size": 100}), stream=old)
        rig.send(*rows("support", 5), stream=old)
        rig.send(config(tmp_path, "support", window={"size": 500}), stream=new)
        assert rig.worker.routes["support"].spec.window.size == 500
    assert window_ids(rig) == windows and rig.received("support") == 35
    [conflict] = rig.worker.status()["configs"]["conflicts"]["support"][1:]
    # The old replica is gone: after the config TTL only the new config counts.
    later = time.time() + worker_module.CONFIG_TTL + 1
    payload, _ = config(tmp_path, "support", window={"size": 500})
    rig.worker.accept(new.datagram(payload, 0), later)  # the new replica, 11 s on
    rig.worker.refresh_routes(later)  # the worker's tick: the old replica's config expired
    assert rig.worker.conflicts == {} and conflict not in rig.worker.configs_heard()
    assert rig.worker.routes["support"].spec.window.size == 500
    assert window_ids(rig) == windows


async def test_only_a_real_change_restarts_windows_or_reloads_the_reference(
    rig: Rig, tmp_path: Path
) -> None:
    rig.send(config(tmp_path, "support", "other"))
    rig.send(*rows("support", 10), *rows("other", 10))
    rig.worker.references["support"] = object()  # type: ignore[assignment]
    rig.worker.references["other"] = kept = object()  # type: ignore[assignment]
    # New features for "support": its rows no longer compare, its windows restart; a
    # new reference is loaded. "other" is as it was.
    features = [{"descriptor": "prompt_chars"}]
    changed = [entry(tmp_path, "support", features=features), entry(tmp_path, "other")]
    rig.send((encode_config(changed), 0))
    assert rig.received("support") == 0 and rig.received("other") == 10
    assert "support" in rig.worker.references  # the same reference: kept
    assert rig.worker.references["other"] is kept
    # A bigger window keeps the rows that fit.
    rig.send(*rows("support", 10))
    rig.send(config(tmp_path, "support", features=features, window={"size": 800}))
    assert rig.received("support") == 10
    rig.send(config(tmp_path, "support", features=features, reference="s"))
    # "other" left every config of the senders heard lately: forgotten; "support" got
    # another reference, to be loaded again, but kept its windows.
    assert "support" not in rig.worker.references and rig.received("other") == 0
    assert set(rig.worker.routes) == {"support"} and rig.received("support") == 10
    # No sender heard lately (all gateways gone, or cut off): the routes stay.
    rig.worker.refresh_routes(time.time() + 3600)
    assert set(rig.worker.routes) == {"support"}


async def test_held_rows_wait_for_their_own_senders_config(rig: Rig, tmp_path: Path) -> None:
    a, b = Stream(), Stream()
    rig.send(config(tmp_path, "support"), stream=a)
    rig.send(*rows("new-route", 8), stream=b)  # b serves a route a does not know yet
    rig.send(config(tmp_path, "support"), stream=a)  # a's config says nothing about b's
    assert rig.worker.dropped == {} and rig.worker.status()["held_rows"] == 8
    rig.send(config(tmp_path, "support", "new-route"), stream=b)
    assert rig.received("new-route") == 8 and rig.worker.dropped == {}


async def test_gaps_in_a_senders_numbers_count_as_lost(rig: Rig, tmp_path: Path) -> None:
    rig.send(config(tmp_path, "support"))
    [(payload, n)] = rows("support", 10)
    first = rig.stream.datagram(payload, n)
    missing = rig.stream.datagram(payload, n)  # sent, never arrives (UDP, a full queue)
    third = rig.stream.datagram(payload, n)
    for datagram in (first, third):
        rig.raw(datagram)
    rig.worker.receive(rig.sock)
    assert rig.received("support") == 20
    status = rig.worker.status()
    assert status["senders"]["datagrams"] == {
        "received": 3,  # the config and two
        "lost": 1,
        "late": 0,
        "duplicate": 0,
    }
    assert {"route": "", "version": "", "reason": "lost", "samples": 10} in status["dropped"]
    mine = status["senders"]["by_sender"][rig.stream.sender]
    assert mine["next"] == {"seq": 4, "rows": 30} and mine["rows"] == {"received": 20, "lost": 10}
    # The missing one turns up after all, and the third again: neither counts twice.
    for datagram in (missing, third):
        rig.raw(datagram)
    rig.worker.receive(rig.sock)
    assert rig.received("support") == 20
    counts = rig.worker.status()["senders"]["datagrams"]
    assert (counts["lost"], counts["late"], counts["duplicate"]) == (1, 1, 1)


SECRET = b"0123456789abcdef-fleet-secret"


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path, ChannelKey(SECRET))
    yield made
    made.close()


async def test_a_worker_with_the_secret_takes_only_datagrams_tagged_with_it(
    keyed: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "switchyard.drift")
    keyed.send(config(tmp_path, "support"))
    keyed.send(*rows("support", 10))
    assert keyed.received("support") == 10 and keyed.worker.dropped == {}
    routes = keyed.worker.routes
    # Anything that reaches the port: a config naming another Kubeflow endpoint (and
    # the token variable to send it), unsigned; rows to poison the window; the same
    # with a tag under another secret. None is taken, none reaches the ledger.
    forged = [
        entry(
            tmp_path,
            "support",
            reference="elsewhere.csv",
            on_drift={
                "kubeflow": {
                    "endpoint": "http://attacker.example",
                    "pipeline_id": "p",
                    "pipeline_version_id": "v",
                    "token_env": "KFP_TOKEN",
                }
            },
        )
    ]
    intruder, wrong = Stream(), Stream(key=ChannelKey(b"another-secret-of-16-bytes"))
    for stream in (intruder, wrong):
        keyed.send((encode_config(forged), 0), *rows("support", 50), stream=stream)
        keyed.send((encode_config(forged), 0), stream=stream)  # a second, same minute
    assert keyed.worker.routes is routes and keyed.received("support") == 10
    assert keyed.worker.routes["support"].spec.reference == "r"
    assert keyed.worker.dropped == {
        ("", "", "unauthenticated"): 3,  # datagrams: their rows were never read
        ("", "", "bad_tag"): 3,
    }
    status = keyed.worker.status()
    assert set(status["senders"]["by_sender"]) == {keyed.stream.sender}
    assert status["auth"] == {"verifies": True, "secret": "test", "unverified": 0}
    assert {"route": "", "version": "", "reason": "unauthenticated", "samples": 3} in (
        status["dropped"]
    )
    # One line per sender (and kind) a minute, naming the sender, never the secret.
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 2, said
    assert intruder.sender in said[0] and "without a tag" in said[0]
    assert wrong.sender in said[1] and "does not match" in said[1]
    assert not [m for m in said if SECRET.decode() in m]
    # The real gateway goes on as before.
    keyed.send(*rows("support", 5))
    assert keyed.received("support") == 15


async def test_a_worker_without_the_secret_takes_signed_datagrams_unchecked_and_says_so(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A rollout that gives the gateways the secret before the worker loses nothing.
    caplog.set_level(logging.INFO, "switchyard.drift")
    signing = Stream(key=ChannelKey(SECRET))
    rig.send(config(tmp_path, "support"), *rows("support", 10), stream=signing)
    rig.send(*rows("support", 5))  # and an unsigned gateway beside it
    assert rig.received("support") == 15 and rig.worker.dropped == {}
    assert rig.worker.status()["auth"] == {"verifies": False, "secret": None, "unverified": 2}
    [said] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert signing.sender in said and "taken unchecked" in said
