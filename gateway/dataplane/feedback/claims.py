"""Where the first feedback for a signed id claims it, so a second one anywhere is 409.

A signed id is valid in every process that shares the fleet secret, so "each request
counts once" needs a store those processes share. Three, by reach:

- `memory`: this process (a single `switchyard serve`; zero setup).
- `sqlite:PATH`: the processes of one machine (the default under `serve --workers N`):
  one row per claim (`INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`), WAL mode,
  rows past the window purged in batches; run on one thread beside the event loop.
- `redis://HOST:PORT/DB`: a fleet of replicas. `SET <prefix><id> <token> NX PX <window
  ms>`, with short connect and read timeouts and a single immediate retry (a pooled
  connection that died with a restarted Redis is replaced, not reported); the random
  token makes that retry idempotent (a key holding our own token is our claim).

Only `POST /v1/feedback` calls a store, never an inference request. A store that does
not answer raises `FeedbackStoreUnavailable` (503, the client sends the feedback again);
every call is bounded (Redis: 1.5 s; the endpoint's backstop: 5 s), and a store that
comes back is used again without a restart. A claim is counted at most once: one whose
answer comes after the client was told 503 is still counted (the resend is then 409);
only a Redis that applies a SET but stalls past the timeouts before answering leaves an
id claimed and not counted (the resend is 409) - the rarer failure than counting twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.errors import FeedbackStoreUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

REDIS_PREFIX = b"switchyard:feedback:"
REDIS_TIMEOUT = 0.5  # seconds, connect and each read; a claim is bounded by 3x this
SQLITE_TIMEOUT = 1.0  # seconds a claim waits for the database lock
PURGE_EVERY = 256  # SQLite: claims between two purges of expired rows
PURGE_BATCH = 1000  # ... rows deleted per purge at most


class ClaimsStore:
    """Claims ids for their first feedback; `description` names it (no credentials)."""

    description = "memory"
    kind = "memory"

    async def claim(self, key: bytes, ttl: float) -> bool:
        """True for the first claim of `key` within `ttl` seconds, False after; raises
        FeedbackStoreUnavailable when the store cannot say."""
        raise NotImplementedError

    async def ping(self) -> str:
        """Why the store does not answer now, or "" when it does (a startup check)."""
        return ""

    async def aclose(self) -> None:
        """Release connections and threads."""

    def unavailable(self, why: str) -> FeedbackStoreUnavailable:
        return FeedbackStoreUnavailable(
            f"feedback store {self.description} unreachable: {why}; this feedback was not "
            "recorded, send it again"
        )


class MemoryClaims(ClaimsStore):
    """This process's claims: two generations of `window` seconds each, so a claim is
    held at least `window` seconds and memory never holds more than two windows."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()
        self._started = float("-inf")  # the first claim starts the first generation

    async def claim(self, key: bytes, ttl: float) -> bool:
        return self.claim_now(key, time.monotonic())

    def claim_now(self, key: bytes, now: float) -> bool:
        if now - self._started >= self.window:
            self._previous, self._current = self._current, set()
            self._started = now
        if key in self._current or key in self._previous:
            return False
        self._current.add(key)
        return True

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


class SqliteClaims(ClaimsStore):
    """Claims shared by the processes of one machine, in one SQLite file."""

    kind = "sqlite"

    def __init__(self, path: str, timeout: float = SQLITE_TIMEOUT) -> None:
        self.path = path
        self.description = f"sqlite:{path}"
        self.timeout = timeout
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        # sqlite3 (its module and the library, ~1 MB resident) is loaded by the store
        # that uses it: a gateway on memory or Redis claims never needs it.
        import sqlite3

        self._sqlite = sqlite3
        # Autocommit: each claim is one statement and its own transaction.
        self._db = sqlite3.connect(
            path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._setup()
        except sqlite3.Error:
            self._db.close()
            raise
        # One thread: the connection is used by it alone after this constructor, and a
        # wait for the lock never stalls the event loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="feedback-claims")
        self._claims = 0

    def _setup(self) -> None:
        for attempt in range(10):  # workers starting together race for the schema
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS claims "
                    "(key BLOB PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID"
                )
                self._db.execute("CREATE INDEX IF NOT EXISTS claims_expires ON claims (expires)")
                return
            except self._sqlite.OperationalError:
                if attempt == 9:
                    raise
                time.sleep(0.05)

    def claim_now(self, key: bytes, ttl: float, now: float) -> bool:
        """The claim itself (on the store's thread; tests call it directly)."""
        cursor = self._db.execute(
            "INSERT INTO claims (key, expires) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
            "SET expires = excluded.expires WHERE claims.expires <= ?",
            (key, now + ttl, now),
        )
        self._claims += 1
        if self._claims % PURGE_EVERY == 0:
            self.purge(now)
        return cursor.rowcount == 1

    def purge(self, now: float) -> int:
        """Delete up to PURGE_BATCH expired rows; how many went."""
        cursor = self._db.execute(
            "DELETE FROM claims WHERE key IN (SELECT key FROM claims WHERE expires <= ? LIMIT ?)",
            (now, PURGE_BATCH),
        )
        return cursor.rowcount

    async def claim(self, key: bytes, ttl: float) -> bool:
        # Bounded by SQLite's own lock timeout, not cut short here: a claim that lands
        # late is still reported (and counted) by the caller, whose deadline answers the
        # client meanwhile (fronts.FeedbackClaim).
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.claim_now, key, ttl, time.time())
        except (self._sqlite.Error, OSError) as exc:
            raise self.unavailable(str(exc) or type(exc).__name__) from None

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._db.close()


class RedisClaims(ClaimsStore):
    """Claims shared by a fleet of replicas, in one Redis."""

    kind = "redis"

    def __init__(self, url: str, timeout: float = REDIS_TIMEOUT, prefix: bytes = REDIS_PREFIX):
        # Imported here: a gateway without a Redis store never loads the client.
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.description = redacted(url)
        self.timeout = timeout
        self.prefix = prefix
        self._client: Redis = Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            # One immediate retry on a fresh connection; redis-py's default (10, with
            # exponential backoff) would hold a feedback for seconds while Redis is down.
            retry=Retry(NoBackoff(), 1),
            max_connections=256,  # past it: 503 at once, never a pile of sockets
        )

    async def claim(self, key: bytes, ttl: float) -> bool:
        px = max(1, int(ttl * 1000))
        try:
            return bool(await self._call(self._set(self.prefix + key, os.urandom(8), px)))
        except _Unreachable as exc:
            raise self.unavailable(exc.why) from None

    async def _set(self, name: bytes, token: bytes, px: int) -> bool:
        if await self._client.set(name, token, nx=True, px=px):
            return True
        # Taken: by another feedback, or by this very claim, sent again by redis-py
        # after its first answer was lost (the token tells them apart).
        return bool(await self._client.get(name) == token)

    async def ping(self) -> str:
        try:
            await self._call(self._client.ping())
        except _Unreachable as exc:
            return exc.why
        return ""

    async def _call(self, call: Any) -> Any:
        from redis.exceptions import RedisError

        limit = self.timeout * 3
        try:
            return await asyncio.wait_for(call, limit)
        except TimeoutError:
            raise _Unreachable(f"no answer within {limit:g}s") from None
        except (RedisError, OSError) as exc:
            raise _Unreachable(str(exc) or type(exc).__name__) from None

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


class _Unreachable(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def redacted(url: str) -> str:
    """`url` without user name and password, for logs and messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    where = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{where}{parts.path}"
