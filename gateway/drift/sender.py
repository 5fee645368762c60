"""The gateway side of drift, off the request path: configure the tap, then every
flush interval take its buffer, extract features and send them to the drift worker.

One task per gateway process, on the data plane's loop. Its cost per sample (feature
extraction, one orjson encode, a share of one `sendto`) is paid every 200 ms in a batch,
not inside any request. A failed send drops that datagram's samples and counts them:
the worker being down or slow never backs up into the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence

from gateway.controlplane.loader import LoadedPolicy
from gateway.dataplane.snapshot import SnapshotRef
from gateway.drift.channel import MAX_DATAGRAM, Address, encode, encode_config, sender_socket
from gateway.drift.config import config_entries
from gateway.drift.features import Extractor, Row, build_extractor
from gateway.drift.tap import DriftTap
from gateway.observability.drift_metrics import DriftCounters

FLUSH_INTERVAL = 0.2  # seconds: how stale a sample may get before the worker sees it
CONFIG_EVERY = 2.0  # seconds between config datagrams (a restarted worker learns it soon)

log = logging.getLogger("switchyard.drift")


class DriftSender:
    """Feeds one process's drift samples to the worker at `address`."""

    def __init__(
        self,
        tap: DriftTap,
        address: Address,
        counters: DriftCounters,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self.tap = tap
        self.address = address
        self.counters = counters
        self._sock = sock if sock is not None else sender_socket()
        self._extractors: dict[str, Extractor] = {}
        self._config: bytes | None = None
        self._warned = False

    @property
    def routes(self) -> Sequence[str]:
        """Routes now sampled."""
        return tuple(self._extractors)

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
        if config is not None and len(config) > MAX_DATAGRAM:
            log.error(
                "drift: the policies' drift blocks are too large to send (%d bytes)", len(config)
            )
            config = None
        self._config = config
        self.send_config()

    def send_config(self) -> None:
        """Tell the worker which routes to watch and how (no-op without drift routes)."""
        if self._config is None:
            return
        try:
            self._sock.sendto(self._config, self.address)
        except OSError as exc:
            self._warn(exc)

    def flush(self) -> int:
        """Send everything buffered; returns the rows sent."""
        samples = self.tap.take()
        if not samples:
            return 0
        groups: dict[tuple[str, str, str], list[Row]] = {}
        dropped = self.counters.dropped
        for decision, body in samples:
            route, variant = decision.route.name, decision.variant
            extract = self._extractors.get(route)
            if extract is None:  # the route's drift block went away since the offer
                continue
            try:
                rows = extract(body)
            except Exception:  # extractors are total; a bug must not stop the feed
                key = (route, variant.version, "extract_failed")
                dropped[key] = dropped.get(key, 0) + 1
                log.exception("drift feature extraction failed for route %s", route)
                continue
            groups.setdefault((route, variant.name, variant.version), []).extend(rows)
        sent_total = 0
        for (route, variant_name, version), rows in groups.items():
            sent = 0
            for datagram, n in encode(route, variant_name, version, rows):
                try:
                    self._sock.sendto(datagram, self.address)
                except OSError as exc:  # down (refused, no such address) or behind (EAGAIN)
                    self._warn(exc)
                    continue
                sent += n
            if sent:
                key2 = (route, version)
                self.counters.sent[key2] = self.counters.sent.get(key2, 0) + sent
                self._warned = False
            if sent < len(rows):
                key = (route, version, "send_failed")
                dropped[key] = dropped.get(key, 0) + len(rows) - sent
            sent_total += sent
        return sent_total

    def close(self) -> None:
        """Close the socket (`run` does it when cancelled)."""
        self._sock.close()

    def _warn(self, exc: OSError) -> None:
        # Once per outage, not once per datagram: the counter tells how much was lost.
        if not self._warned:
            self._warned = True
            log.warning("drift worker not reachable (%s); dropping samples until it is", exc)

    async def run(
        self,
        ref: SnapshotRef,
        policies: Callable[[], Sequence[LoadedPolicy]],
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        """Flush every `interval`; follow policy reloads (the snapshot's version is the
        policies' hash, so it changes exactly when they do). Runs until cancelled."""
        version = ref.current.version
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
                    self.flush()
                except Exception:
                    log.exception("drift flush failed; retrying in %.1fs", interval)
        finally:
            self.flush()
            self.close()
