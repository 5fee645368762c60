"""The access log: one JSON line per request, off by default, size-rotated.

Lines are built only while it is on (`switchyard serve --access-log`), buffered on the
event loop (a full buffer drops the line and counts it) and written in batches by an
executor thread, a few times a second: no request waits on a disk. With a file, a
line that would take it past `max_bytes` first shifts FILE -> FILE.1 -> ... ->
FILE.N (the oldest goes), so the log holds at most about (N + 1) x `max_bytes`;
worker processes of one gateway share it under an exclusive `flock` on FILE.lock.
Without a file, lines go to standard error, where the process log went before.

What a line holds is `RequestRecord.access_line`: ids, route, variant, version,
endpoint, status, timings, tokens; never a header, a body or a query string, so no
API key can reach the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import Final

import orjson

log = logging.getLogger("switchyard.access")

BUFFER_LINES: Final = 10_000  # lines held between two batches; more are dropped
FLUSH_EVERY: Final = 0.2  # seconds between batches


class AccessLog:
    """JSON lines fed from the event loop, written off it."""

    def __init__(
        self,
        path: str | None,
        max_bytes: int,
        backups: int,
        counters: dict[str, int],
        loop: asyncio.AbstractEventLoop,
        *,
        capacity: int = BUFFER_LINES,
    ) -> None:
        self.path = Path(path) if path else None
        self.max_bytes = max_bytes
        self.backups = max(backups, 0)
        self.counters = counters  # "written", "dropped": the metrics' dict, shared
        self.loop = loop
        self.capacity = capacity
        self._lines: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future[tuple[int, str | None]] | None = None
        self._failed_before = False

    def offer(self, line: dict[str, object]) -> None:
        """Queue one line for the next batch; drop it (counted) if the buffer is full."""
        lines = self._lines
        if len(lines) >= self.capacity:
            self.counters["dropped"] += 1
            return
        lines.append(orjson.dumps(line) + b"\n")
        if self._timer is None:
            self._timer = self.loop.call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        """Start writing what is buffered, unless a batch is still being written."""
        self._timer = None
        if not self._lines:
            return
        if self._writing is not None:
            self._timer = self.loop.call_later(FLUSH_EVERY, self.flush)
            return
        lines, self._lines = self._lines, []
        self._writing = self.loop.run_in_executor(None, self._write, lines)
        self._writing.add_done_callback(self._written)

    def _written(self, done: asyncio.Future[tuple[int, str | None]]) -> None:
        self._writing = None
        if done.cancelled():
            return
        self._count(*done.result())

    def _count(self, lost: int, error: str | None) -> None:
        if error is not None and not self._failed_before:  # say it once
            self._failed_before = True
            log.warning("access log %s: %s", self.path or "stderr", error)
        self.counters["dropped"] += lost

    def _write(self, lines: list[bytes]) -> tuple[int, str | None]:
        """Append `lines`, rotating as needed (an executor thread).

        Returns (lines lost, the error if any)."""
        try:
            if self.path is None:
                sys.stderr.buffer.write(b"".join(lines))
                sys.stderr.buffer.flush()
            else:
                self._append(self.path, lines)
        except OSError as exc:
            return len(lines), f"{len(lines)} lines not written: {exc}"
        self.counters["written"] += len(lines)
        return 0, None

    def _append(self, path: Path, lines: list[bytes]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            try:
                size = path.stat().st_size if path.exists() else 0
                chunk: list[bytes] = []
                for line in lines:
                    if size and size + len(line) > self.max_bytes:
                        _write_all(path, chunk)
                        chunk = []
                        self._rotate(path)
                        size = 0
                    chunk.append(line)
                    size += len(line)
                _write_all(path, chunk)
            finally:
                fcntl.flock(held, fcntl.LOCK_UN)

    def _rotate(self, path: Path) -> None:
        if self.backups == 0:
            path.unlink(missing_ok=True)
            return
        for n in range(self.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))

    async def aclose(self) -> None:
        """Write everything still buffered (the gateway is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        lines, self._lines = self._lines, []
        if lines:
            self._count(*await self.loop.run_in_executor(None, self._write, lines))


def _write_all(path: Path, lines: list[bytes]) -> None:
    if lines:
        with open(path, "ab") as out:
            out.write(b"".join(lines))
