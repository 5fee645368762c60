"""The lease task: each key's limits shared by every process of a fleet through Redis.

With `--quota-store redis://HOST:PORT/DB` each process runs this task on its event
loop. Every `--quota-sync-interval` (0.2 s) it sends one script to Redis for all the
meters it is using (`gateway.dataplane.quota.Meter`), which for each one, atomically:

- counts what this process spent since the last batch (the fleet's usage, `u`),
- takes back what it gives up (a lease larger than it needs, or all of it once idle),
- grants what it asks for out of the window's pool (`g`, never past the limit; a
  process that spent more than it was granted, on credit or while Redis was away,
  asks for that debt first),

and heartbeats the process, so every process knows how many share the fleet (for the
share each keeps to while Redis is down). The request path never waits on this: it
spends the lease it holds, and may run ahead of it by a small credit while the pool is
not dry (`quota.Quotas.available`); the next batch pays that debt.

A lease is sized to what the process used lately (its smoothed rate times
`LEASE_HORIZON` seconds, plus what it had to refuse), so busy processes hold more,
idle ones give theirs back, and no lease is large next to the limit. The fleet
admits at most the limit plus the credit (1/50 of the limit in all) per window; what
may go unused is the leases' crumbs smaller than one request.

Redis down (no answer within `--quota-timeout`, refused, reset): counted, logged once
per outage, shown in `GET /admin/keys`, and the mode decides (`--quota-redis-down`):
`open` lets each process spend the lease it holds plus an even share (1 / processes,
as last counted) of what the pool had left when Redis last answered (of the whole limit
in a window it has not answered in), `closed` the lease it holds, then 503 with
Retry-After. Once Redis answers again, what was spent meanwhile is reported and any
debt taken from the pool.

Keys: `<prefix><meter ident>:<window id>` (a hash of `g` granted and `u` used,
expiring after the window), and `<prefix>procs` (a sorted set of live processes).
One Redis (or a primary); the script names its keys in ARGV, so not a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.dataplane.feedback.claims import redacted
from gateway.dataplane.quota import DAY, Meter, Quotas
from gateway.observability.quota_metrics import QuotaMetrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("switchyard.quota")

PREFIX = "switchyard:quota:"
LEASE_HORIZON = 1.0  # seconds of a process's recent use that its lease covers
HEARTBEAT_STALE = 5.0  # seconds without a batch after which a process is not counted
REFRESH_EVERY = 5  # batches between refreshing the fleet's usage of quiet meters
_SCHEMES = ("redis://", "rediss://", "unix://")

# ARGV: now_ms, process id, stale_ms, then per meter: key, limit, want, give back, used,
# ttl_ms. Replies: the process count, then per meter: granted, pool left, fleet used.
# Counts stay below 2^53 (a month of $9000 is 9e15 picodollars), exact in Lua numbers.
_SCRIPT = """
local now = tonumber(ARGV[1])
local procs = ARGV[4]
redis.call('ZADD', procs, now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', procs, '-inf', now - tonumber(ARGV[3]))
redis.call('PEXPIRE', procs, tonumber(ARGV[3]) * 4)
local out = {redis.call('ZCARD', procs)}
local i = 5
while i + 5 <= #ARGV do
  local key = ARGV[i]
  local limit = tonumber(ARGV[i + 1])
  local want = tonumber(ARGV[i + 2])
  local back = tonumber(ARGV[i + 3])
  local g = tonumber(redis.call('HGET', key, 'g') or '0')
  g = g - back
  if g < 0 then g = 0 end
  local got = 0
  if want > 0 then
    got = limit - g
    if got > want then got = want end
    if got < 0 then got = 0 end
  end
  g = g + got
  redis.call('HSET', key, 'g', string.format('%.0f', g))
  local u = redis.call('HINCRBY', key, 'u', ARGV[i + 4])
  redis.call('PEXPIRE', key, ARGV[i + 5])
  out[#out + 1] = got
  out[#out + 1] = limit - g
  out[#out + 1] = u
  i = i + 6
end
return out
"""


class QuotaStoreError(Exception):
    """Quota store settings the gateway cannot start with."""


def check(spec: str | None, mode: str) -> None:
    if mode not in ("open", "closed"):
        raise QuotaStoreError(f"--quota-redis-down must be open or closed, not {mode!r}")
    if spec is not None and not spec.startswith(_SCHEMES):
        raise QuotaStoreError(
            f"--quota-store must be redis://HOST:PORT/DB (or rediss://, unix://), not "
            f"{redacted(spec)!r}"
        )


CURRENT, PREVIOUS, NEXT = 0, 1, 2  # which window of its meter an item is about


@dataclass
class _Item:
    meter: Meter
    wid: int
    want: int
    back: int
    used: int
    role: int  # CURRENT; PREVIOUS: what the last window left unreported; NEXT: a lease
    # on the window about to begin


class QuotaSync:
    """One process's lease task against one Redis."""

    def __init__(
        self,
        quotas: Quotas,
        metrics: QuotaMetrics,
        url: str,
        *,
        mode: str = "open",
        interval: float = 0.2,
        timeout: float = 0.5,
        processes: int = 1,
        prefix: str = PREFIX,
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        check(url, mode)
        self.quotas = quotas
        self.metrics = metrics
        self.description = redacted(url)
        self.mode = mode
        self.interval = interval
        self.timeout = timeout
        self.prefix = prefix
        self.process = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.down_since: float | None = None
        self.last_error = ""
        self.last_ok: float | None = None
        self.batches = 0
        self._last_plan = time.time()
        # The batch out now, with what it planned (see sync_once).
        self._pending: tuple[asyncio.Task[Any], list[_Item]] | None = None
        self._client: Redis = Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # the next batch is the retry
        )
        self._script = self._client.register_script(_SCRIPT)
        quotas.fleet = True
        quotas.store_up = True
        quotas.down_open = mode == "open"
        quotas.processes = max(1, processes)
        quotas.link = self
        metrics.store_up = 1

    def describe(self) -> str:
        return (
            f"quotas: leases from {self.description} every {self.interval:g}s (Redis down: "
            f"{self.mode}; {self.quotas.processes} processes expected until it says)"
        )

    async def run(self) -> None:
        """Refill and return leases until cancelled."""
        while True:
            started = time.monotonic()
            await self.sync_once()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    # One batch ---------------------------------------------------------------------

    def plan(self, wall: float, closing: bool = False) -> list[_Item]:
        """What to ask, give back and report for every meter in use."""
        quotas = self.quotas
        dt = max(wall - self._last_plan, 1e-3)
        self._last_plan = wall
        refresh = self.batches % REFRESH_EVERY == 0
        items: list[_Item] = []
        kept: list[Meter] = []
        for m in quotas.active:
            if wall >= m.ends_at:
                m.roll(wall)
            if m.prev_unreported:
                items.append(_Item(m, m.prev_wid, 0, 0, m.prev_unreported, PREVIOUS))
            if closing and m.next_granted > 0:
                items.append(_Item(m, m.next_wid, 0, m.next_granted, 0, NEXT))
            elif not closing and m.next_wid != m.wid + 1 and m.kind < DAY:
                ahead = self._ahead(m, wall)
                if ahead > 0:
                    items.append(_Item(m, m.wid + 1, ahead, 0, 0, NEXT))
            consumed = max(0, m.spent - m.rate_mark)
            m.rate_mark = m.spent
            m.rate = 0.5 * m.rate + 0.5 * consumed / dt
            if m.rate < 1e-3:
                m.rate = 0.0
            held = m.granted - m.spent
            target = int(m.rate * LEASE_HORIZON) + m.refused
            cap = max(1, m.limit // 4)  # no lease is large next to the limit
            if closing:
                target = 0
            elif target > cap:
                target = cap
            want = target - held if held < target else 0
            back = 0
            if held > 0 and (held > 2 * target or target == 0):
                back = held - target
            elif m.dry and 0 < held < m.refused:
                # A crumb of a dry pool, too small for what was refused here: pooled
                # with the others' it may serve a request elsewhere (asked next batch).
                back, want = held, 0
            used = m.spent - m.reported
            if want or back or used or refresh:
                items.append(_Item(m, m.wid, want, back, used, CURRENT))
            # Quiet, holding nothing and owing nothing: let it go until used again.
            idle = m.rate == 0.0 and m.refused == 0 and not m.next_granted
            if idle and held - back == 0 and not used:
                m.active = False
            else:
                kept.append(m)
        quotas.active[:] = kept
        return items

    def _ahead(self, m: Meter, wall: float) -> int:
        """The lease to take on `m`'s next window now (0: none yet): within two batches
        of its start, what this window's pace would spend in LEASE_HORIZON, so that a
        busy process does not begin the window on credit alone."""
        if m.ends_at - wall > 2 * self.interval or m.window < 4 * self.interval:
            return 0
        elapsed = wall - (m.ends_at - m.window)
        if elapsed <= 0 or m.spent <= 0:
            return 0
        return min(max(1, m.limit // 4), int(m.spent / elapsed * LEASE_HORIZON))

    async def sync_once(self, closing: bool = False) -> bool:
        """One batch: plan it, send it, apply the answer. A batch still out from before
        (no answer within the timeout) is waited for first, and no new one is sent
        while it is: its usage is not reported twice. Nothing here is ever cancelled
        (redis-py's calls are bounded by its socket timeouts): a batch in flight when
        the task is cancelled finishes on its own, and `aclose` collects it."""
        if self._pending is not None:
            task, items = self._pending
            if not await self._answered(task):
                self._failed("timeout", f"no answer within {self.timeout:g}s", [])
                return False
            self._pending = None
            if not self._finish(task, items):
                return False
        wall = time.time()
        items = self.plan(wall, closing)
        self.batches += 1
        args: list[Any] = [
            int(wall * 1000),
            self.process,
            int(max(HEARTBEAT_STALE, 20 * self.interval) * 1000),
            self.prefix + "procs",
        ]
        for item in items:
            m = item.meter
            args += [
                f"{self.prefix}{m.ident}:{item.wid}",
                m.limit,
                item.want,
                item.back,
                item.used,
                int(_ttl(m) * 1000),
            ]
        task = asyncio.get_running_loop().create_task(self._script(args=args))
        self._pending = (task, items)
        if not await self._answered(task):
            self._failed("timeout", f"no answer within {self.timeout:g}s", items)
            return False
        self._pending = None
        return self._finish(task, items)

    async def _answered(self, task: asyncio.Task[Any]) -> bool:
        if not task.done():
            await asyncio.wait({task}, timeout=self.timeout)  # never cancels `task`
        return task.done()

    def _finish(self, task: asyncio.Task[Any], items: list[_Item]) -> bool:
        if task.cancelled():
            self._failed("error", "cancelled", items)
            return False
        exc = task.exception()
        if exc is not None:  # RedisError, OSError: a refused, reset or odd store
            self._failed("error", str(exc) or type(exc).__name__, items)
            return False
        self._apply(items, [int(v) for v in task.result()])
        return True

    def _apply(self, items: list[_Item], reply: list[int]) -> None:
        quotas, metrics = self.quotas, self.metrics
        quotas.processes = max(1, reply[0])
        if not quotas.store_up:
            gone = time.time() - (self.down_since or time.time())
            log.info("quota store %s answers again (down %.1fs)", self.description, gone)
        quotas.store_up = True
        metrics.store_up = 1
        self.down_since = None
        self.last_ok = time.time()
        refilled = returned = False
        for n, item in enumerate(items):
            got, left, used = reply[1 + 3 * n : 4 + 3 * n]
            m = item.meter
            if item.role == PREVIOUS:
                if m.prev_wid == item.wid:
                    m.prev_unreported -= item.used
                continue
            if item.role == NEXT and m.wid != item.wid:
                if m.next_wid not in (-1, item.wid):
                    continue  # a lease for a window that went by: lost to the pool
                m.next_wid = item.wid
                m.next_granted += got - item.back
                refilled = refilled or got > 0
                continue
            if m.wid != item.wid:  # the window turned while the batch was out
                if m.prev_wid == item.wid:
                    m.prev_unreported -= item.used
                continue
            m.granted += got - item.back
            m.reported += item.used
            m.fleet_used = used
            m.pool_left = left if left > 0 else 0
            m.dry = left <= 0
            m.refused = 0
            refilled = refilled or got > 0
            returned = returned or item.back > 0
        metrics.refills += refilled
        metrics.returned += returned

    def _failed(self, reason: str, detail: str, items: list[_Item]) -> None:
        metrics = self.metrics
        metrics.store_errors[reason] = metrics.store_errors.get(reason, 0) + 1
        self.last_error = detail
        if self.quotas.store_up:
            self.quotas.store_up = False
            metrics.store_up = 0
            self.down_since = time.time()
            if self.mode == "open":
                then = (
                    "each process keeps to the lease it holds plus an even share of what "
                    f"each limit had left ({self.quotas.processes} processes)"
                )
            else:
                then = "requests that need a new lease are refused (503)"
            log.warning(
                "quota store %s is unreachable (%s): %s until it answers",
                self.description,
                detail,
                then,
            )
        for m in {item.meter for item in items}:  # nothing was given back: hold it again
            if not m.active:
                m.active = True
                self.quotas.active.append(m)

    # Reads for the admin API -------------------------------------------------------

    async def fleet_used(self, meters: list[Meter]) -> dict[str, int] | None:
        """Each meter's fleet-wide use in its current window (None: Redis down)."""
        wall = time.time()
        names = []
        for m in meters:
            if wall >= m.ends_at:
                m.roll(wall)
            names.append(f"{self.prefix}{m.ident}:{m.wid}")
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hget(name, "u")
                values = await asyncio.wait_for(pipe.execute(), self.timeout)
        except Exception:
            return None
        return {m.ident: int(v or 0) for m, v in zip(meters, values, strict=True)}

    def view(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "url": self.description,
            "up": self.quotas.store_up,
            "down_since": self.down_since,
            "last_error": self.last_error,
            "last_ok": self.last_ok,
            "when_down": self.mode,
            "processes": self.quotas.processes,
            "interval_s": self.interval,
        }

    async def aclose(self) -> None:
        """Give back every lease and report what was spent, then leave the fleet; each
        step bounded, none cancelled (see `sync_once`)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            if self.quotas.store_up and await self.sync_once(closing=True):
                await self._answered(loop.create_task(self._leave()))
        if self._pending is not None:
            await self._answered(self._pending[0])
        await self._answered(loop.create_task(self._client.aclose()))

    async def _leave(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.zrem(self.prefix + "procs", self.process)


def _ttl(m: Meter) -> float:
    """How long a window's counters outlive its start (a window, plus some)."""
    if m.kind >= DAY:
        return 32 * 86400.0 if m.kind > DAY else 2 * 86400.0
    return 2 * m.window + 60.0
