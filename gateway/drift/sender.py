"""The gateway side of drift, off the request path: configure the tap, then every
flush interval take its buffer, extract features and send them to the drift worker.

One task per gateway process, on the data plane's loop. Its cost per sample (feature
extraction, one orjson encode, a share of one `sendto`) is paid every 200 ms in a batch,
not inside any request. The worker being down or slow never backs up into the gateway:
a datagram the worker cannot take now (not bound yet, restarting, its queue full; over
UDP: the network answered "port unreachable", or the host name does not resolve) waits
in a bounded backlog of encoded datagrams and goes out, oldest first, once the worker
takes datagrams again; the config goes first, so a worker that just started knows the
routes before their rows arrive. When the backlog is full its oldest rows are dropped.
Every sample that never leaves this process is counted here with its reason:

- `buffer_full`: the request path's buffer was full (counted by the tap);
- `extract_failed`: turning the body into features raised (a bug);
- `route_removed`: the route's drift block went away between sampling and the flush;
- `too_large`: one sample does not fit a datagram;
- `backlog_full`: the worker was down or behind longer than the backlog holds;
- `send_failed`: the OS refused the datagram for another reason (not retried);
- `shutdown`: still waiting in the backlog when the gateway stopped.

True labels (`DriftTap.offer_label`) go out in `labels` datagrams after the rows, from a
backlog of their own (BACKLOG_LABELS); labels lost on this side are counted with the
reasons above prefixed `labels_` (labels_backlog_full, labels_send_failed, ...).

What leaves and never arrives (UDP loss, a full receive queue the sender cannot see,
a worker killed with datagrams in its queue) the worker counts from the numbers every
datagram carries (`channel.Stream`, `senders.py`): a datagram is numbered when the
kernel takes it, so one held in the backlog keeps its number.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.controlplane.policy.loader import LoadedPolicy
from gateway.dataplane.snapshot import SnapshotRef
from gateway.drift.channel import (
    HEAD_MAX,
    MAX_DATAGRAM,
    PROBE,
    Address,
    ChannelKey,
    Link,
    Stream,
    encode,
    encode_config,
    encode_labels,
    link_to,
)
from gateway.drift.config import config_entries
from gateway.drift.features import Extractor, Row, build_extractor
from gateway.drift.tap import DriftTap, Sample
from gateway.observability.drift_metrics import DriftCounters

FLUSH_INTERVAL = 0.2  # seconds: how stale a sample may get before the worker sees it
# Samples extracted per turn of the event loop: ~2.5 us each in the micro benchmark,
# ~6 us in a loaded gateway (cold caches), so a slice holds the loop ~0.2-0.4 ms,
# whatever the sample rate.
SLICE = 64
CONFIG_EVERY = 2.0  # seconds between config datagrams (a restarted worker learns it soon)
# Rows kept for a worker that cannot take them yet. Encoded (~200 bytes a row), so this
# bounds the memory at a few MB while covering a worker start (Python, pandas: seconds)
# at a thousand samples per second.
BACKLOG_ROWS = 10_000
BACKLOG_LABELS = 10_000  # labels kept for a worker that cannot take them yet
# The worker is not there (not bound yet, restarting: ECONNREFUSED, or ENOENT for a
# socket file; over UDP also an unreachable or unresolved host) or behind (its queue is
# full: EAGAIN; ENOBUFS on some systems): the datagram is worth sending again later.
# Any other error would fail again the same way.
_RETRY_LATER = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ENOENT,
        errno.EAGAIN,
        errno.EWOULDBLOCK,
        errno.ENOBUFS,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }
)

log = logging.getLogger("switchyard.drift")


@dataclass(frozen=True, slots=True)
class _Datagram:
    payload: bytes  # framed (numbered) when sent
    route: str
    version: str
    rows: int
    labels: int = 0  # a labels datagram: records in it (it carries no rows)


class DriftSender:
    """Feeds one process's drift samples to the worker at `address`."""

    def __init__(
        self,
        tap: DriftTap,
        address: Address,
        counters: DriftCounters,
        *,
        link: Link | None = None,
        backlog: int = BACKLOG_ROWS,
        key: ChannelKey | None = None,
    ) -> None:
        self.tap = tap
        self.address = address
        self.counters = counters
        self.backlog_limit = backlog
        self.link: Link = link if link is not None else link_to(address)
        # This process's numbering (a random sender id); with the fleet secret's `key`
        # every datagram is tagged as it is framed, in the flush, off the request path.
        self.stream = Stream(key=key)
        self._extractors: dict[str, Extractor] = {}
        self._config: bytes | None = None
        self._backlog: deque[_Datagram] = deque()
        self._backlog_rows = 0
        self._labels: deque[_Datagram] = deque()
        self._backlog_labels = 0
        # Whether the worker may lack our config: at start, and after any datagram it
        # did not take (it may be a new worker). Then the config goes before any rows.
        self._config_owed = True
        # Whether the last send was refused (the worker is down, as far as we know):
        # then a probe goes before the config (see `send_config`).
        self._refused = False
        self._warned = False

    @property
    def routes(self) -> Sequence[str]:
        """Routes now sampled."""
        return tuple(self._extractors)

    @property
    def backlog_rows(self) -> int:
        """Rows encoded and waiting for the worker to take them."""
        return self._backlog_rows

    def configure(self, policies: Sequence[LoadedPolicy]) -> None:
        """Sample the routes whose policy has a drift block, at their rates."""
        extractors: dict[str, Extractor] = {}
        rates: dict[str, float] = {}
        for loaded in policies:
            policy = loaded.policy
            if policy.drift is None:
                continue
            extractors[policy.route] = build_extractor(policy.protocol, policy.drift.features)
            rates[policy.route] = policy.drift.sample
        # Extractors first: a sample taken under the new rates must find its extractor.
        self._extractors = extractors
        self.tap.configure(rates)
        config = encode_config(config_entries(policies)) if extractors else None
        if config is not None and len(config) + HEAD_MAX > MAX_DATAGRAM:
            log.error(
                "drift: the policies' drift blocks are too large to send (%d bytes)", len(config)
            )
            config = None
        self._config = config
        self.send_config()

    def send_config(self) -> bool:
        """Tell the worker which routes to watch and how; False if it did not take it
        (no-op, True, without drift routes)."""
        if self._config is None:
            return True
        try:
            if self._refused:
                # Over UDP a send to a closed port succeeds, and only the next one fails
                # (ICMP port unreachable): an unnumbered probe takes that first send, so
                # a worker that is still down costs no numbered datagram, which it
                # would count as lost once back.
                self.link.send(PROBE)
            self.link.send(self.stream.frame(self._config))
        except OSError as exc:
            self._config_owed = self._refused = True
            self._warn(exc)
            return False
        self.stream.sent(0)
        self._config_owed = self._refused = False
        if not self._backlog:
            self._warned = False  # the outage is over: warn again at the next one
        return True

    def flush(self) -> int:
        """Send everything buffered (after the backlog); returns the rows sent."""
        samples, keys = self.tap.take_keyed()
        self._encode_samples(samples, keys, 0, len(samples))
        return self._send_all()

    async def flush_sliced(self) -> int:
        """`flush`, extracting `SLICE` samples at a time and letting the event loop run
        between slices: at 10% of 30k requests/s, one flush extracts ~600 samples,
        milliseconds of the loop every interval that every connection would wait
        through."""
        samples, keys = self.tap.take_keyed()
        done = 0
        try:
            while done < len(samples):
                if done:
                    await asyncio.sleep(0)
                end = min(done + SLICE, len(samples))
                self._encode_samples(samples, keys, done, end)
                done = end
        finally:
            if done < len(samples):  # cancelled between slices (a stop): keep the rest
                self._encode_samples(samples, keys, done, len(samples))
        return self._send_all()

    def _encode_samples(
        self, samples: list[Sample], keys: dict[int, str], start: int, end: int
    ) -> None:
        """Extract `samples[start:end]` and add their rows to the backlog, a datagram
        (or more) per route and version."""
        groups: dict[tuple[str, str, str], list[Row]] = {}
        for index in range(start, end):
            decision, body = samples[index]
            route, variant = decision.route.name, decision.variant
            extract = self._extractors.get(route)
            if extract is None:  # the route's drift block went away since the offer
                self._drop(route, variant.version, "route_removed", 1)
                continue
            try:
                rows = extract(body)
            except Exception:  # extractors are total; a bug must not stop the feed
                self._drop(route, variant.version, "extract_failed", 1)
                log.exception("drift feature extraction failed for route %s", route)
                continue
            if keys:
                key = keys.get(index)
                if key is not None:  # a ground-truth route's request: labels join by it
                    for row in rows:
                        row["key"] = key
            group_key = (route, variant.name, variant.version)
            group = groups.get(group_key)
            if group is None:
                groups[group_key] = rows  # the extractor's own new list
            else:
                group.extend(rows)
        for (route, variant_name, version), rows in groups.items():
            encoded = 0
            limit = self.link.rows_limit
            for payload, n in encode(route, variant_name, version, rows, limit):
                self._backlog.append(_Datagram(payload, route, version, n))
                self._backlog_rows += n
                encoded += n
            if encoded < len(rows):
                self._drop(route, version, "too_large", len(rows) - encoded)

    def _send_all(self) -> int:
        """Encode the labels taken since the last flush, then send the backlog (rows
        first, then labels); returns the rows sent."""
        records = self.tap.take_labels()
        if records:
            # One datagram names no single route: its first record's stands for it in
            # the drop counts (labels of one flush are mostly one route's).
            first = records[0]
            encoded = 0
            for payload, n in encode_labels(records, self.link.rows_limit):
                self._labels.append(_Datagram(payload, first.route, first.version, 0, n))
                self._backlog_labels += n
                encoded += n
            if encoded < len(records):
                self._drop(first.route, first.version, "labels_too_large", len(records) - encoded)
        sent = self._drain()
        if not self._backlog:
            self._drain_labels()
        self._trim()
        return sent

    def _drain_labels(self) -> None:
        """Send the labels' backlog (after the rows), oldest first."""
        labels = self._labels
        if labels and self._config_owed and not self.send_config():
            return
        while labels:
            item = labels[0]
            try:
                self.link.send(self.stream.frame(item.payload))
            except OSError as exc:
                self._warn(exc)
                if exc.errno in _RETRY_LATER:
                    self._config_owed = self._refused = True
                    return
                labels.popleft()
                self._backlog_labels -= item.labels
                self._drop(item.route, item.version, "labels_send_failed", item.labels)
                continue
            self.stream.sent(0)
            labels.popleft()
            self._backlog_labels -= item.labels

    @property
    def backlog_labels(self) -> int:
        """Labels encoded and waiting for the worker to take them."""
        return self._backlog_labels

    def _drain(self) -> int:
        """Send the backlog, oldest first, until the worker stops taking datagrams."""
        if not self._backlog:
            return 0
        # A worker that refused our last datagram may have restarted since: without the
        # config first it would not know the routes of the rows that follow.
        if self._config_owed and not self.send_config():
            return 0
        sent_total = 0
        backlog, sent = self._backlog, self.counters.sent
        while backlog:
            item = backlog[0]
            try:
                self.link.send(self.stream.frame(item.payload))
            except OSError as exc:
                self._warn(exc)
                if exc.errno in _RETRY_LATER:
                    self._config_owed = self._refused = True
                    break  # the rest waits for the next flush, in order
                backlog.popleft()
                self._backlog_rows -= item.rows
                self._drop(item.route, item.version, "send_failed", item.rows)
                continue
            self.stream.sent(item.rows)
            backlog.popleft()
            self._backlog_rows -= item.rows
            key = (item.route, item.version)
            sent[key] = sent.get(key, 0) + item.rows
            sent_total += item.rows
        if not backlog:
            self._warned = False
        return sent_total

    def _trim(self) -> None:
        """Keep the backlog within its bound by dropping its oldest rows (the newest say
        more about the traffic the window should show)."""
        backlog = self._backlog
        while self._backlog_rows > self.backlog_limit and backlog:
            item = backlog.popleft()
            self._backlog_rows -= item.rows
            self._drop(item.route, item.version, "backlog_full", item.rows)
        labels = self._labels
        while self._backlog_labels > BACKLOG_LABELS and labels:
            item = labels.popleft()
            self._backlog_labels -= item.labels
            self._drop(item.route, item.version, "labels_backlog_full", item.labels)

    def _drop(self, route: str, version: str, reason: str, rows: int) -> None:
        key = (route, version, reason)
        dropped = self.counters.dropped
        dropped[key] = dropped.get(key, 0) + rows

    def close(self) -> None:
        """Count what still waits for the worker as lost, and close the socket (`run`
        does both when cancelled, after a last flush)."""
        while self._backlog:
            item = self._backlog.popleft()
            self._drop(item.route, item.version, "shutdown", item.rows)
        self._backlog_rows = 0
        while self._labels:
            item = self._labels.popleft()
            self._drop(item.route, item.version, "labels_shutdown", item.labels)
        self._backlog_labels = 0
        self.link.close()

    def _warn(self, exc: OSError) -> None:
        # Once per outage, not once per datagram: the counters tell how much was held
        # back or lost.
        if not self._warned:
            self._warned = True
            log.warning(
                "drift worker not reachable (%s); holding up to %d samples for it, dropping "
                "and counting the oldest beyond that",
                exc,
                self.backlog_limit,
            )

    async def run(
        self,
        ref: SnapshotRef,
        policies: Callable[[], Sequence[LoadedPolicy]],
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        """Flush every `interval`; follow policy reloads (the snapshot's version is the
        policies' hash, so it changes exactly when they do). Runs until cancelled."""
        version = ref.current.version
        # Off the flush loop: a slow DNS lookup of a UDP worker must not hold samples.
        maintain = asyncio.get_running_loop().create_task(self.link.maintain())
        self.configure(policies())
        every = max(1, round(CONFIG_EVERY / interval))
        ticks = 0
        try:
            while True:
                await asyncio.sleep(interval)
                ticks += 1
                if ref.current.version != version:
                    version = ref.current.version
                    self.configure(policies())
                elif ticks % every == 0:
                    self.send_config()
                try:
                    await self.flush_sliced()
                except Exception:
                    log.exception("drift flush failed; retrying in %.1fs", interval)
        finally:
            maintain.cancel()
            await asyncio.gather(maintain, return_exceptions=True)
            self.flush()
            self.close()
