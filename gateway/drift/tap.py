"""The drift tap: the only drift code on the request path.

The data plane calls `tap.offer(decision, body)` once per proxied request, after routing.
It must cost next to nothing: a route without a drift block is one dict lookup; a sampled
request is a random draw and one list append of a tuple holding references (the parsed
body is not copied or serialised here). Features are extracted later, off the request
path, by `DriftSender`. A full buffer drops the sample and counts it.

The body is held by reference until the next flush (about 200 ms), so whoever offers it
must not mutate it afterwards; the data plane only reads the parsed body.

This module is compiled with the request path (`gateway.native.loader.HOT_MODULES`):
it must stay mypyc-compatible, and its classes cannot be subclassed by Python code.

On routes with a `ground_truth` block the exchange then names the request's feedback
claim key (`keyed`, right after it mints the signed id, on the same loop turn as the
offer): the sender puts it on the request's rows as `key`, so the drift worker can join
a label (whose `LabeledRecord.key` is the same text) with the request's features. A
request that waited in a flow-control queue before its first attempt is usually not
the last sample by then: its rows carry no key.

True labels (`offer_label`, from `POST /v1/feedback` with a `label`, never from an
inference request) wait in a second bounded buffer for the same flush; only routes the
tap samples (a drift block) keep them, since only their windows use them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.dataplane.decide import Decision
    from gateway.drift.labeled import LabeledRecord

Sample = tuple["Decision", dict[str, Any]]


class Tap(Protocol):
    """What the data plane calls per proxied request."""

    def offer(self, decision: Decision, body: dict[str, Any]) -> None:
        """Consider this request for the drift windows; never raises, never blocks."""

    def offer_label(self, record: LabeledRecord) -> None:
        """Keep a joined label for the drift worker; never raises, never blocks."""

    def keyed(self, decision: Decision, key: str) -> None:
        """The claim key of the request just offered with `decision`, if it was sampled."""


class NoTap:
    """The tap of a data plane without drift: returns at once."""

    __slots__ = ()

    def offer(self, decision: Decision, body: dict[str, Any]) -> None:
        return None

    def offer_label(self, record: LabeledRecord) -> None:
        return None

    def keyed(self, decision: Decision, key: str) -> None:
        return None


class DriftTap:
    """Samples requests of routes with a drift block into a bounded buffer.

    `configure` swaps in the per-route sample rates (from the serving policies); routes
    absent from it are not sampled. `dropped` counts samples lost to a full buffer per
    (route, version); pass the metrics' dict so `/metrics` shows it without a copy.
    """

    __slots__ = ("_buffer", "_keys", "_labels", "_random", "_rates", "capacity", "dropped")

    def __init__(
        self,
        capacity: int,
        *,
        rng: random.Random | None = None,
        dropped: dict[tuple[str, str], int] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("the drift buffer needs room for at least one sample")
        self.capacity = capacity
        self.dropped = dropped if dropped is not None else {}
        self._rates: dict[str, float] = {}
        self._buffer: list[Sample] = []
        self._labels: list[LabeledRecord] = []
        self._keys: dict[int, str] = {}  # buffer index -> the sample's claim key
        # Its own generator: sampling must not shift the routing RNG's sequence (a seeded
        # gateway keeps making the same canary draws with drift on or off).
        self._random = (rng or random.Random()).random

    def configure(self, rates: Mapping[str, float]) -> None:
        """Sample rate per route name (0 < rate <= 1); replaces the previous rates."""
        self._rates = dict(rates)

    @property
    def rates(self) -> Mapping[str, float]:
        """The sample rate of every route now sampled."""
        return self._rates

    def offer(self, decision: Decision, body: dict[str, Any]) -> None:
        rate = self._rates.get(decision.route.name)
        if rate is None:
            return
        if rate < 1.0 and self._random() >= rate:
            return
        buffer = self._buffer
        if len(buffer) >= self.capacity:
            key = (decision.route.name, decision.variant.version)
            self.dropped[key] = self.dropped.get(key, 0) + 1
            return
        buffer.append((decision, body))

    def offer_label(self, record: LabeledRecord) -> None:
        if record.route not in self._rates:
            return  # no drift block: the worker keeps no window for it
        if len(self._labels) >= self.capacity:
            key = (record.route, record.version)
            self.dropped[key] = self.dropped.get(key, 0) + 1
            return
        self._labels.append(record)

    def keyed(self, decision: Decision, key: str) -> None:
        buffer = self._buffer
        if buffer and buffer[-1][0] is decision:  # this request's sample, just offered
            self._keys[len(buffer) - 1] = key

    def take_labels(self) -> list[LabeledRecord]:
        """Every label kept since the last call."""
        taken, self._labels = self._labels, []
        return taken

    def take(self) -> list[Sample]:
        """Everything buffered since the last call (the buffer starts empty again)."""
        taken, self._buffer = self._buffer, []
        self._keys = {}
        return taken

    def take_keyed(self) -> tuple[list[Sample], dict[int, str]]:
        """`take`, with the claim keys of the samples that have one (by index)."""
        keys = self._keys
        return self.take(), keys

    def __len__(self) -> int:
        return len(self._buffer)
