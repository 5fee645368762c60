"""`switchyard drift-worker`: the drift worker process.

`switchyard serve` starts it by itself when a policy has a drift block. Run it yourself
(with SWITCHYARD_DRIFT_WORKER=false on the gateway) to give it its own container or
CPU share: it must share the gateway's drift folder (the datagram address derives from
it) and see the files the policies name; the gateways send it the drift blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from gateway.controlplane.registry.client import RegistryConfig
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
    worker.add_argument("--generation", type=int, default=1, help=argparse.SUPPRESS)
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    worker.set_defaults(handler=_run)


def _settings(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {
        "drift_dir": args.drift_dir,
        "file_roots": tuple(args.file_roots) if args.file_roots else None,
        "registry_uri": args.registry_uri,
    }
    return from_env().with_overrides(**values)


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log_level)
    drift_dir = Path(settings.drift_dir)
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
        return _sleep_until_signalled(args.parent_pid)
    registry = RegistryConfig.from_settings(settings) if settings.registry_uri else None
    options = WorkerOptions(
        drift_dir=drift_dir,
        file_roots=settings.file_roots,
        registry=registry,
        generation=args.generation,
        parent_pid=args.parent_pid,
    )

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await DriftWorker(options).run(stop)

    return asyncio.run(main())


def _sleep_until_signalled(parent_pid: int | None) -> int:
    stopped = False

    def stop(*_: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stop)
    while not stopped and (parent_pid is None or os.getppid() == parent_pid):
        time.sleep(0.5)
    return 0
