"""`switchyard drift-worker`: the drift worker process.

`switchyard serve` starts it by itself when a policy has a drift block. Run it yourself
(with SWITCHYARD_DRIFT_WORKER=false on the gateway) to give it its own container or
CPU share: it must share the gateway's drift folder (the datagram address derives from
it) and see the files the policies name; the gateways send it the drift blocks.

One worker for a fleet of gateways on several machines: `--listen udp://0.0.0.0:9300
--http 0.0.0.0:9301`, and every gateway `serve --drift-worker-address
udp://WORKER:9300 --drift-status-url http://WORKER:9301`. `--http` serves the status,
the metrics and the HTML reports (see gateway/drift/api.py); the reports need
SWITCHYARD_ADMIN_TOKEN as a bearer token when it is set.

With the fleet secret (SWITCHYARD_FLEET_SECRET, or --fleet-secret-file; the gateways'
own) it takes only datagrams tagged with it, and drops and counts the rest
(`unauthenticated`, `bad_tag`); without one it takes every datagram, signed or not.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gateway.controlplane.registry.client import RegistryConfig
from gateway.dataplane.feedback.fleet import FeedbackConfigError, fleet_secret
from gateway.drift.channel import (
    ADDRESS_TAKEN,
    AddressError,
    ChannelKey,
    UdpAddress,
    parse_host_port,
    parse_udp,
)
from gateway.drift.status import STATUS_FILE, write_json
from gateway.observability.logs import configure_logging
from gateway.settings import Settings, from_env

log = logging.getLogger("switchyard.drift")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser(
        "drift-worker",
        help="run the drift worker (serve starts it by itself when a policy has drift)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--drift-dir", metavar="DIR", help="default: .state/drift")
    worker.add_argument("--file-root", action="append", metavar="DIR", dest="file_roots")
    worker.add_argument("--registry-uri", metavar="URL")
    worker.add_argument(
        "--listen",
        metavar="udp://HOST:PORT",
        help="receive samples over UDP here (a fleet's worker); default: the drift "
        "folder's Unix socket on this machine",
    )
    worker.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /status, /metrics and /report here (port 0 picks one)",
    )
    worker.add_argument(
        "--fleet-secret-file",
        metavar="PATH",
        help="a file holding the gateways' fleet secret (SWITCHYARD_FLEET_SECRET, the "
        "secret itself, wins): take only datagrams tagged with it; with neither, take "
        "every datagram",
    )
    worker.add_argument("--generation", type=int, default=1, help=argparse.SUPPRESS)
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    worker.set_defaults(handler=_run)


def _settings(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {
        "drift_dir": args.drift_dir,
        "file_roots": tuple(args.file_roots) if args.file_roots else None,
        "registry_uri": args.registry_uri,
        "fleet_secret_file": args.fleet_secret_file,
    }
    return from_env().with_overrides(**values)


def _addresses(args: argparse.Namespace) -> tuple[UdpAddress | None, tuple[str, int] | None]:
    listen = parse_udp(args.listen, "--listen", listening=True) if args.listen else None
    http = parse_host_port(args.http, "--http") if args.http else None
    return listen, http


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log_level)
    drift_dir = Path(settings.drift_dir)
    try:
        listen, http = _addresses(args)
        secret, secret_source = fleet_secret(settings)
    except (AddressError, FeedbackConfigError) as exc:
        print(f"switchyard drift-worker: {exc}", file=sys.stderr)
        return 2
    try:
        from gateway.drift.worker import DriftWorker, WorkerOptions
    except ImportError as exc:
        # Without the drift extra the worker cannot work; say so where the admin API
        # and /metrics look, and stay down instead of being restarted in a loop.
        message = f"the drift worker needs the drift extra ({exc}): pip install 'switchyard[drift]'"
        log.error("%s", message)
        try:
            write_json(
                drift_dir / STATUS_FILE,
                {"error": message, "heartbeat": 0, "generation": args.generation, "routes": {}},
            )
        except OSError as write_error:
            log.error("cannot write the drift status to %s: %s", drift_dir, write_error)
        if http is not None:  # the gateways read the status over HTTP: tell them there
            return asyncio.run(_serve_error(message, args.generation, http, drift_dir, settings))
        return _sleep_until_signalled(args.parent_pid)
    registry = RegistryConfig.from_settings(settings) if settings.registry_uri else None
    options = WorkerOptions(
        drift_dir=drift_dir,
        file_roots=settings.file_roots,
        registry=registry,
        generation=args.generation,
        parent_pid=args.parent_pid,
        listen=listen,
        http=http,
        token=settings.admin_token,
        key=ChannelKey(secret) if secret is not None else None,
        key_source=secret_source,
    )

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await DriftWorker(options).run(stop)

    return asyncio.run(main())


async def _serve_error(
    message: str, generation: int, http: tuple[str, int], drift_dir: Path, settings: Settings
) -> int:
    from gateway.admin.server import AdminServer
    from gateway.drift.api import worker_app

    def status() -> dict[str, Any]:
        return {"error": message, "heartbeat": time.time(), "generation": generation, "routes": {}}

    server = AdminServer(worker_app(status, drift_dir, settings.admin_token), *http)
    if not await server.start():
        return ADDRESS_TAKEN
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0


def _sleep_until_signalled(parent_pid: int | None) -> int:
    stopped = False

    def stop(*_: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    while not stopped and (parent_pid is None or os.getppid() == parent_pid):
        time.sleep(0.5)
    return 0
