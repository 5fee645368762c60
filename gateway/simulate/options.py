"""What every simulator's command line shares: listen options, faults, argument types,
and the run loop that serves until SIGTERM / SIGINT.

Its own module so that each simulator can declare its subcommand without importing the
CLI that lists them all (which imports every simulator).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

from gateway.simulate.faults import FaultRule, FaultSpecError, parse_fault
from gateway.simulate.server import SimServer


def run_until_signalled(kind: str, start: Callable[[], Awaitable[SimServer]]) -> int:
    """Start a simulator on uvloop, announce it on stdout, serve until SIGTERM / SIGINT."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def serve() -> int:
        try:
            server = await start()
        except OSError as exc:
            print(f"switchyard-sim: cannot listen: {exc}", file=sys.stderr)
            return 1
        print(f"switchyard-sim {kind} listening on {server.url}", flush=True)
        # Simulators with a second protocol (KServe's gRPC) announce it after the HTTP
        # line, which is the one scripts wait for first.
        for label, address in getattr(server, "extra_listeners", ()):
            print(f"switchyard-sim {kind} {label} listening on {address}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            await server.close()
        return 0

    code: int = uvloop.run(serve())
    return code


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every simulator shares: where it listens, its name, timing and faults."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=port_number, default=0, help="port; 0 picks a free one (default 0)"
    )
    parser.add_argument("--name", help="instance name sent as x-sim-name (default sim-PORT)")
    parser.add_argument(
        "--latency-ms",
        type=non_negative_number,
        default=0.0,
        help="delay before the response, or before the first stream chunk",
    )
    parser.add_argument(
        "--error-rate",
        type=rate_number,
        default=0.0,
        help="share of requests answered 500 with an error body (0..1)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        dest="faults",
        type=fault_rule,
        default=[],
        metavar="KIND[=VALUE][:RATE]",
        help="inject a fault into a share of requests (repeatable; syntax below)",
    )
    parser.add_argument("--seed", type=int, help="seed for fault draws and generated text")


def fault_rule(text: str) -> FaultRule:
    try:
        return parse_fault(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def float_number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def non_negative_number(text: str) -> float:
    value = float_number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def rate_number(text: str) -> float:
    value = float_number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def count_number(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def positive_number(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def port_number(text: str) -> int:
    value = whole_number(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    return value
