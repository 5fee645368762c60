"""Start the drift worker process when a policy asks for drift; restart it if it dies.

Run by whichever process owns the gateway: the single gateway process, or the
supervisor of `serve --workers N` (its gateway workers then only send samples). The
worker is a child process (`python -m gateway drift-worker`) with the same settings,
passed through the environment like the supervisor's workers; it exits by itself if
its parent disappears, so a killed gateway leaves no orphan behind. None is started
when the gateways send to a fleet's worker (`--drift-worker-address udp://...`).

Several gateways on one machine that share a `--drift-dir` share its worker address
(the abstract socket derives from the folder), so they share one worker too: a manager
starts one only while nobody has bound the address (`address_served`). Two that look
at the same moment both start one; the second cannot bind, exits with ADDRESS_TAKEN,
and its manager goes back to watching: no error, no restart loop. When the gateway
that started the worker stops, the worker exits with it and another gateway's manager
starts the next one within a second or two; samples wait in the senders' backlogs
meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

from gateway.controlplane.policy.loader import collect_policies
from gateway.controlplane.policy.sources import Fingerprint, fingerprint
from gateway.drift.channel import ADDRESS_TAKEN, address_served, worker_address
from gateway.settings import Settings, to_env

log = logging.getLogger("switchyard.drift")
CHECK_EVERY = 1.0


def runs_local_worker(settings: Settings) -> bool:
    """Whether this gateway (its single process, or its supervisor) should keep a drift
    worker running on this machine: not when told not to, nor when it sends to a
    fleet's worker elsewhere."""
    return settings.drift_worker and not settings.drift_worker_address


class DriftWanted:
    """Whether any policy file has a drift block; re-reads the files only on change.

    The supervisor asks this (it loads no policies itself); a gateway process asks its
    reloader instead. Policies from a ConfigMap are not files the supervisor can read,
    so with one (`always`) the worker runs regardless; idle, it costs little (it loads
    Evidently only once a drift block arrives).
    """

    def __init__(self, paths: Sequence[str], *, always: bool = False) -> None:
        self._paths = tuple(paths)
        self._always = always
        self._fingerprint: Fingerprint | None = None
        self._wanted = False

    def __call__(self) -> bool:
        if self._always:
            return True
        found = fingerprint(self._paths)
        if found != self._fingerprint:
            self._fingerprint = found
            policies, _ = collect_policies(self._paths)
            self._wanted = any(p.policy.drift is not None for p in policies)
        return self._wanted


class DriftWorkerManager:
    """Keeps one drift worker running while `wanted()` says so."""

    def __init__(self, settings: Settings, wanted: Callable[[], bool]) -> None:
        self.settings = settings
        self.wanted = wanted
        self.generation = 0  # workers started so far
        self.proc: asyncio.subprocess.Process | None = None
        self.address = worker_address(settings.drift_dir)
        self.elsewhere = False  # another process serves the address (logged once)
        self._stopping = False

    async def run(self) -> None:
        """Until cancelled: start the worker when wanted and nobody serves the drift
        folder's address, restart it when it exits."""
        failures = 0
        started = 0.0
        while not self._stopping:
            proc = self.proc
            if proc is not None and proc.returncode is not None:
                self.proc = None
                if proc.returncode == ADDRESS_TAKEN:
                    # Another gateway's worker bound it first: watch that one instead.
                    self._serving_elsewhere()
                    continue
                # A worker that ran a while failed once; one that dies at once, again.
                failures = 1 if time.monotonic() - started > 30 else failures + 1
                delay = min(0.5 * failures, 10.0)
                log.error(
                    "drift worker exited with %s; restarting in %.1fs (samples wait in the "
                    "gateways' backlogs meanwhile; beyond it they are dropped and counted)",
                    proc.returncode,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if proc is None and self.wanted():
                if address_served(self.address):
                    self._serving_elsewhere()
                else:
                    if self.elsewhere:
                        log.info("drift worker: the address is free again; starting one")
                    self.elsewhere = False
                    started = time.monotonic()
                    await self._spawn()
            await asyncio.sleep(CHECK_EVERY)

    def _serving_elsewhere(self) -> None:
        if not self.elsewhere:
            log.info(
                "drift worker: another process serves %s (a gateway sharing this drift "
                "folder); using it, and starting one if it goes away",
                self.settings.drift_dir,
            )
        self.elsewhere = True

    async def _spawn(self) -> None:
        self.generation += 1
        env = {**os.environ, **to_env(self.settings), "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "drift-worker",
            "--generation",
            str(self.generation),
            "--parent-pid",
            str(os.getpid()),
            env=env,
        )
        log.info("drift worker started (pid %d)", self.proc.pid)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker: SIGTERM, then SIGKILL after `timeout`."""
        self._stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
