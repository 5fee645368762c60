"""The comparison log: sampled shadow comparisons as JSON lines, for offline analysis.

Records are serialised into a bounded in-memory buffer (a full buffer drops the record
and counts it) and written in batches by a thread of the event loop's executor, at
most one batch at a time, so no comparison waits on a disk. The file is bounded: a
batch that would take it past `max_bytes` first renames it to FILE.1 (replacing the
previous one), so the log never holds more than about twice `max_bytes`. Worker
processes of one gateway may share the file: an exclusive `flock` on FILE.lock orders
their rotations and appends.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("switchyard.shadow")

BUFFER_RECORDS = 10_000  # records held between two batches; more are dropped


class ComparisonLog:
    """A rotated JSON-lines file fed from the event loop, written off it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        counters: dict[str, int],
        loop: asyncio.AbstractEventLoop,
        *,
        capacity: int = BUFFER_RECORDS,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.counters = counters  # "written", "dropped": the metrics' dict, shared
        self.loop = loop
        self.capacity = capacity
        self._lines: list[bytes] = []
        self._writing: asyncio.Future[tuple[int, int, str | None]] | None = None
        self._failed_before = False

    def offer(self, record: dict[str, Any]) -> None:
        """Queue one record for the next batch; drop it (counted) if the buffer is full."""
        if len(self._lines) >= self.capacity:
            self.counters["dropped"] += 1
            return
        self._lines.append(orjson.dumps(record) + b"\n")

    def flush(self) -> None:
        """Start writing what is buffered, unless a batch is still being written."""
        if not self._lines or self._writing is not None:
            return
        lines, self._lines = self._lines, []
        self._writing = self.loop.run_in_executor(None, self._write, lines)
        self._writing.add_done_callback(self._written)

    def _written(self, done: asyncio.Future[tuple[int, int, str | None]]) -> None:
        self._writing = None
        if done.cancelled():
            return
        written, lost, error = done.result()
        self.counters["written"] += written
        self.counters["dropped"] += lost
        if error is not None:
            if not self._failed_before:  # say it once, not once per batch
                log.warning("shadow comparison log %s: %s", self.path, error)
            self._failed_before = True

    def _write(self, lines: list[bytes]) -> tuple[int, int, str | None]:
        """Append `lines` (rotating first if needed); runs in an executor thread.

        Returns (records written, records lost, the error if any)."""
        data = b"".join(lines)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = self.path.with_name(self.path.name + ".lock")
            with open(lock, "a") as held:
                fcntl.flock(held, fcntl.LOCK_EX)
                try:
                    size = self.path.stat().st_size if self.path.exists() else 0
                    if size and size + len(data) > self.max_bytes:
                        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                    with open(self.path, "ab") as out:
                        out.write(data)
                finally:
                    fcntl.flock(held, fcntl.LOCK_UN)
        except OSError as exc:
            return 0, len(lines), f"{len(lines)} records not written: {exc}"
        return len(lines), 0, None

    async def aclose(self) -> None:
        """Write everything still buffered (the gateway is stopping)."""
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        lines, self._lines = self._lines, []
        if lines:
            written, lost, error = await self.loop.run_in_executor(None, self._write, lines)
            self.counters["written"] += written
            self.counters["dropped"] += lost
            if error is not None:
                log.warning("shadow comparison log %s: %s", self.path, error)
