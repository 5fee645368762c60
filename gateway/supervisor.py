"""`switchyard serve --workers N`: N data-plane processes behind one port and one admin API.

Python runs one core per process, so a gateway uses more cores by running more
processes. The supervisor reserves the port, starts N workers that each bind it with
SO_REUSEPORT (the kernel spreads connections), and serves the admin API itself: its
`/metrics` merges every worker's scrape, `/admin/reload` reaches every worker, and
SIGTERM drains them all. A worker that dies is restarted. Workers read the same policy
files, so a reload reaches all of them within the watch interval. The admin API is the
one a gateway process serves (`gateway.admin.endpoints`), each endpoint answered from the
workers (`gateway.admin.fleet`), on the same server class (`gateway.admin.server`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass, replace

from gateway.admin.endpoints import features
from gateway.admin.fleet import build_fleet_app
from gateway.admin.server import AdminServer
from gateway.dataplane.feedback.fleet import FeedbackConfigError, for_workers
from gateway.drift.manager import DriftWanted, DriftWorkerManager, runs_local_worker
from gateway.settings import Settings, to_env

log = logging.getLogger("switchyard.supervisor")
_LISTENING = re.compile(r"switchyard listening on (http://\S+) admin (http://\S+)")


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    admin: str | None = None
    restarts: int = 0


class Supervisor:
    """Starts, watches and stops the worker processes of one gateway."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers = [Worker(i) for i in range(settings.workers)]
        self.stopping = False
        self.port = settings.port
        self.grpc_port = settings.grpc_port
        self.admin_url: str | None = None  # the admin API, as the workers reach it
        self._started = asyncio.Event()

    async def run(self) -> int:
        try:
            # One fleet secret and one claims store for all workers, so feedback for a
            # request reaches whichever worker and counts once (gateway.dataplane.feedback).
            self.settings = for_workers(self.settings)
        except FeedbackConfigError as exc:
            log.error("refusing to start: %s", exc)
            return 2
        reserve = _reserve_port(self.settings.host, self.settings.port)
        self.port = reserve.getsockname()[1]
        # The gRPC port too: with port 0 each worker would otherwise pick its own.
        grpc_reserve = None
        if self.settings.grpc_port is not None and self.settings.grpc_port >= 0:
            grpc_reserve = _reserve_port(self.settings.host, self.settings.grpc_port)
            self.grpc_port = grpc_reserve.getsockname()[1]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        # The admin API before the workers: they read their statistics (rollout gates,
        # experiments) from its merged /metrics, so they start knowing its address.
        # Every worker runs a rollout controller, and drift endpoints with a drift dir.
        enabled = features(drift_dir=self.settings.drift_dir, rollouts=True)
        admin = AdminServer(
            build_fleet_app(self, self.settings.admin_token, enabled=enabled),
            self.settings.admin_host,
            self.settings.admin_port,
        )
        if not await admin.start():
            log.error(
                "admin API could not start on %s:%d",
                self.settings.admin_host,
                self.settings.admin_port,
            )
            return 2
        self.admin_url = _loopback_url(self.settings.admin_host, admin.port)
        watchers = [loop.create_task(self._keep(w)) for w in self.workers]
        ready = [loop.create_task(self._wait_admin(w)) for w in self.workers]
        done, _ = await asyncio.wait(ready, timeout=60)
        if len(done) != len(ready) or any(t.result() is None for t in done):
            log.error("workers did not start; see their output above")
            self.stopping = True
            self._forward(signal.SIGTERM)
            await asyncio.gather(*watchers, return_exceptions=True)
            await admin.stop()
            return 2
        drift = None
        if runs_local_worker(self.settings):  # not when it sends to a fleet's worker
            wanted = DriftWanted(
                self.settings.policies, always=self.settings.policy_configmap is not None
            )
            drift = DriftWorkerManager(self.settings, wanted)
            drift_task = loop.create_task(drift.run())
        grpc_at = f" grpc {self.settings.host}:{self.grpc_port}" if grpc_reserve else ""
        print(
            f"switchyard listening on http://{self.settings.host}:{self.port} "
            f"admin http://{self.settings.admin_host}:{admin.port}{grpc_at} "
            f"({len(self.workers)} workers)",
            flush=True,
        )
        await stop.wait()
        log.info(
            "stopping %d workers (drain up to %.0fs)",
            len(self.workers),
            self.settings.drain_timeout,
        )
        self.stopping = True
        self._forward(signal.SIGTERM)
        await asyncio.gather(*watchers, return_exceptions=True)
        if drift is not None:
            drift_task.cancel()
            await asyncio.gather(drift_task, return_exceptions=True)
            await drift.stop()
        await admin.stop()
        reserve.close()
        if grpc_reserve is not None:
            grpc_reserve.close()
        return 0

    async def _keep(self, worker: Worker) -> None:
        """Run one worker; restart it (with back-off) if it dies while we serve."""
        while True:
            await self._spawn(worker)
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.stopping:
                return
            worker.admin = None
            worker.restarts += 1
            delay = min(0.5 * worker.restarts, 5.0)
            log.error("worker %d exited with %s; restarting in %.1fs", worker.index, code, delay)
            await asyncio.sleep(delay)

    async def _spawn(self, worker: Worker) -> None:
        settings = replace(
            self.settings,
            port=self.port,
            grpc_port=self.grpc_port,
            workers=1,
            reuse_port=True,
            admin_host="127.0.0.1",
            admin_port=0,
            drift_worker=False,  # one drift worker for all: this supervisor runs it
            supervisor_admin=self.admin_url,  # the workers' statistics source (gateway.stats)
            # Quotas: the share of each limit per process until the store counts them.
            quota_processes=self.settings.quota_processes or self.settings.workers,
        )
        env = {**os.environ, **to_env(settings), "SWITCHYARD_WORKER_INDEX": str(worker.index)}
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        asyncio.get_running_loop().create_task(self._pump(worker, worker.proc))

    async def _pump(self, worker: Worker, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            m = _LISTENING.search(line)
            if m:
                worker.admin = m.group(2)
                continue
            print(f"[worker {worker.index}] {line}", flush=True)

    async def _wait_admin(self, worker: Worker) -> str | None:
        for _ in range(600):
            if worker.admin is not None:
                return worker.admin
            if worker.proc is not None and worker.proc.returncode is not None:
                return None
            await asyncio.sleep(0.1)
        return None

    def _forward(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(sig)

    def admins(self) -> list[str]:
        return [w.admin for w in self.workers if w.admin is not None]


def _loopback_url(host: str, port: int) -> str:
    """The admin API's URL from this machine (a wildcard address is reached on loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) so port 0 picks one port that every worker then shares."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_supervisor(settings: Settings) -> int:
    import uvloop

    from gateway.observability.logs import configure_logging

    configure_logging(settings.log_level)
    return uvloop.run(Supervisor(settings).run())
