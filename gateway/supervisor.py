"""`switchyard serve --workers N`: N data-plane processes behind one port and one admin API.

Python runs one core per process, so a gateway uses more cores by running more
processes. The supervisor reserves the port, starts N workers that each bind it with
SO_REUSEPORT (the kernel spreads connections), and serves the admin API itself: its
`/metrics` merges every worker's scrape, `/admin/reload` reaches every worker, and
SIGTERM drains them all. A worker that dies is restarted. Workers read the same policy
files, so a reload reaches all of them within the watch interval.
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

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.admin.aggregate import merge_expositions
from gateway.admin.server import AdminServer
from gateway.admin.shadow import supervisor_shadow_routes
from gateway.drift.manager import DriftWanted, DriftWorkerManager
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
        self._started = asyncio.Event()

    async def run(self) -> int:
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
        watchers = [loop.create_task(self._keep(w)) for w in self.workers]
        ready = [loop.create_task(self._wait_admin(w)) for w in self.workers]
        done, _ = await asyncio.wait(ready, timeout=60)
        if len(done) != len(ready) or any(t.result() is None for t in done):
            log.error("workers did not start; see their output above")
            self.stopping = True
            self._forward(signal.SIGTERM)
            await asyncio.gather(*watchers, return_exceptions=True)
            return 2
        admin = AdminServer(
            build_supervisor_app(self), self.settings.admin_host, self.settings.admin_port
        )
        if not await admin.start():
            log.error(
                "admin API could not start on %s:%d",
                self.settings.admin_host,
                self.settings.admin_port,
            )
            self.stopping = True
            self._forward(signal.SIGTERM)
            await asyncio.gather(*watchers, return_exceptions=True)
            return 2
        drift = None
        if self.settings.drift_worker:
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


_FORWARDED = frozenset({"authorization", "content-type"})


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) so port 0 picks one port that every worker then shares."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def build_supervisor_app(sup: Supervisor) -> Starlette:
    """Admin API of a multi-worker gateway: merged metrics, fan-out reload, probes."""
    # Workers check the admin token themselves; the supervisor passes the header on.

    def auth_headers(request: Request) -> dict[str, str]:
        # The bearer token, and what authenticates a registry webhook (MLflow's HMAC
        # signature headers) and lets the worker parse its body.
        return {
            name: value
            for name, value in request.headers.items()
            if name in _FORWARDED or name.startswith("x-mlflow-")
        }

    async def metrics(_: Request) -> Response:
        async with httpx.AsyncClient(timeout=5) as client:
            replies = await asyncio.gather(
                *(client.get(f"{a}/metrics") for a in sup.admins()), return_exceptions=True
            )
        texts = [r.text for r in replies if isinstance(r, httpx.Response) and r.is_success]
        body = merge_expositions(texts)
        body += (
            "# HELP switchyard_workers Worker processes answering the metrics scrape.\n"
            "# TYPE switchyard_workers gauge\n"
            f"switchyard_workers {len(texts)}.0\n"
        )
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def livez(_: Request) -> Response:
        return JSONResponse({"status": "alive", "workers": len(sup.admins())})

    async def readyz(_: Request) -> Response:
        if sup.stopping:
            return JSONResponse({"status": "draining"}, status_code=503)
        if len(sup.admins()) < len(sup.workers):
            return JSONResponse({"status": "workers starting"}, status_code=503)
        return JSONResponse({"status": "ready", "workers": len(sup.workers)})

    async def fan_out(request: Request) -> Response:
        body = await request.body()
        # The query too: `POST /admin/reload?remove=ROUTE` confirms on every worker.
        query = f"?{request.url.query}" if request.url.query else ""
        async with httpx.AsyncClient(timeout=30) as client:
            replies = await asyncio.gather(
                *(
                    client.request(
                        request.method,
                        f"{a}{request.url.path}{query}",
                        content=body,
                        headers=auth_headers(request),
                    )
                    for a in sup.admins()
                ),
                return_exceptions=True,
            )
        results = []
        status = 200
        for admin, reply in zip(sup.admins(), replies, strict=False):
            if isinstance(reply, httpx.Response):
                status = max(status, reply.status_code)
                results.append(
                    {"worker": admin, "status": reply.status_code, "result": reply.json()}
                )
            else:
                status = 502
                results.append({"worker": admin, "error": str(reply)})
        return JSONResponse({"workers": results}, status_code=status)

    async def first_worker(request: Request) -> Response:
        admins = sup.admins()
        if not admins:
            return JSONResponse({"error": "no worker is up"}, status_code=503)
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.request(
                request.method,
                f"{admins[0]}{request.url.path}",
                content=await request.body(),
                headers=auth_headers(request),
            )
        return Response(
            reply.content,
            status_code=reply.status_code,
            media_type=reply.headers.get("content-type"),
        )

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/livez", livez),
            Route("/readyz", readyz),
            Route("/admin/reload", fan_out, methods=["POST"]),
            # Every worker resolves aliases itself: each must hear that one moved.
            Route("/admin/registry/webhook", fan_out, methods=["POST"]),
            *supervisor_shadow_routes(sup.admins),  # every worker's copies, merged
            Route("/admin/{rest:path}", first_worker, methods=["GET", "POST"]),
        ]
    )


def run_supervisor(settings: Settings) -> int:
    import uvloop

    from gateway.observability.logs import configure_logging

    configure_logging(settings.log_level)
    return uvloop.run(Supervisor(settings).run())
