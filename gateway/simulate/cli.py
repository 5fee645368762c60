"""`switchyard simulate <backend>`: run a backend simulator until SIGTERM / SIGINT.

On start it prints exactly one line to stdout, `switchyard-sim <backend> listening on
http://HOST:PORT`, which scripts and tests parse (with `--port 0` the port is free-picked).
`python -m gateway.simulate <backend> ...` runs the same commands without the rest of
the gateway's CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import uvloop

from gateway.simulate.bentoml import add_bentoml
from gateway.simulate.faults import FAULT_SYNTAX, FaultRule, FaultSpecError, parse_fault
from gateway.simulate.kserve import add_kserve
from gateway.simulate.kubeflow import add_kubeflow
from gateway.simulate.ollama import OllamaOptions, serve_ollama
from gateway.simulate.openai import OpenAIOptions, serve_openai
from gateway.simulate.server import SimServer

# A string: argparse._SubParsersAction is not subscriptable at runtime on Python 3.11.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What `ArgumentParser.add_subparsers()` returns."""


def add_commands(subparsers: Subparsers) -> None:
    """Register `simulate` and its backends on the `switchyard` command line."""
    parser = subparsers.add_parser(
        "simulate",
        help="run a backend simulator (quick start, tests, load tests)",
        description="Protocol-faithful, fast backend simulators with fault injection.",
    )
    add_backends(parser.add_subparsers(dest="simulator", required=True, metavar="BACKEND"))


def add_backends(backends: Subparsers) -> None:
    """Register one subcommand per simulated backend (`openai`, `ollama`; more to come)."""
    openai = backends.add_parser(
        "openai",
        help="OpenAI / vLLM API: chat, completions, embeddings, models, /metrics",
        description=(
            "Simulate a vLLM server speaking the OpenAI API. Faults and x-sim-* headers "
            "apply to /v1/chat/completions, /v1/completions and /v1/embeddings. Every "
            "response carries x-sim-name; GET /sim/stats, POST /sim/reset and "
            "GET/POST /sim/faults (rules, /health status) control it from tests."
        ),
        epilog=FAULT_SYNTAX,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_llm_options(
        openai,
        chunk="delay between stream chunks",
        served="model id listed by /v1/models (repeatable; default: sim)",
        strict="answer 404 for a model not in --served-model, like vLLM",
    )
    openai.add_argument(
        "--max-num-seqs",
        type=_positive,
        default=256,
        help="capacity /metrics reports running vs waiting against (default 256)",
    )
    openai.set_defaults(handler=run_openai)
    _add_ollama(backends)
    add_kubeflow(backends)
    add_kserve(backends)
    add_bentoml(backends)


def _add_llm_options(
    parser: argparse.ArgumentParser, *, chunk: str, served: str, strict: str
) -> None:
    """Options every LLM simulator takes (OpenAI/vLLM and Ollama)."""
    _add_common_options(parser)
    parser.add_argument("--chunk-delay-ms", type=_non_negative, default=0.0, help=chunk)
    parser.add_argument("--tokens", type=_count, default=16, help="tokens per answer (default 16)")
    parser.add_argument(
        "--served-model", action="append", dest="served_models", metavar="NAME", help=served
    )
    parser.add_argument(
        "--embedding-dim", type=_positive, default=8, help="embedding size (default 8)"
    )
    parser.add_argument("--strict-models", action="store_true", help=strict)


def _llm_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of OpenAIOptions/OllamaOptions from `_add_llm_options` flags."""
    return {
        "served_models": tuple(args.served_models or ("sim",)),
        "latency_ms": args.latency_ms,
        "chunk_delay_ms": args.chunk_delay_ms,
        "tokens": args.tokens,
        "error_rate": args.error_rate,
        "faults": tuple(args.faults),
        "seed": args.seed,
        "embedding_dimensions": args.embedding_dim,
        "strict_models": args.strict_models,
    }


def run_openai(args: argparse.Namespace) -> int:
    """Run the OpenAI / vLLM simulator from parsed arguments; returns the exit status."""
    try:
        options = OpenAIOptions(**_llm_options(args), max_num_seqs=args.max_num_seqs)
    except ValueError as exc:
        print(f"switchyard-sim: {exc}", file=sys.stderr)
        return 2
    host: str = args.host
    port: int = args.port
    name: str | None = args.name
    return run_until_signalled("openai", lambda: serve_openai(options, host, port, name))


def _add_ollama(backends: Subparsers) -> None:
    ollama = backends.add_parser(
        "ollama",
        help="Ollama native API: /api/chat, /api/generate (NDJSON), /api/embed, /api/tags",
        description=(
            "Simulate an Ollama server (ollama serve). Faults and x-sim-* headers apply "
            "to /api/chat, /api/generate, /api/embed and /api/embeddings. Every response "
            "carries x-sim-name; GET /sim/stats, POST /sim/reset and GET/POST /sim/faults "
            "control it from tests."
        ),
        epilog=FAULT_SYNTAX,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_llm_options(
        ollama,
        chunk="delay between stream lines",
        served="model listed by /api/tags; no tag means :latest (repeatable; default: sim)",
        strict="answer 404 for a model not in --served-model, like Ollama for an unpulled model",
    )
    ollama.set_defaults(handler=run_ollama)


def run_ollama(args: argparse.Namespace) -> int:
    """Run the Ollama simulator from parsed arguments; returns the exit status."""
    try:
        options = OllamaOptions(**_llm_options(args))
    except ValueError as exc:
        print(f"switchyard-sim: {exc}", file=sys.stderr)
        return 2
    host: str = args.host
    port: int = args.port
    name: str | None = args.name
    return run_until_signalled("ollama", lambda: serve_ollama(options, host, port, name))


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


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gateway.simulate <backend> ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.simulate", description="Run a backend simulator."
    )
    add_backends(parser.add_subparsers(dest="simulator", required=True, metavar="BACKEND"))
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every simulator shares: where it listens, its name, timing and faults."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=0, help="port; 0 picks a free one (default 0)"
    )
    parser.add_argument("--name", help="instance name sent as x-sim-name (default sim-PORT)")
    parser.add_argument(
        "--latency-ms",
        type=_non_negative,
        default=0.0,
        help="delay before the response, or before the first stream chunk",
    )
    parser.add_argument(
        "--error-rate",
        type=_rate,
        default=0.0,
        help="share of requests answered 500 with an error body (0..1)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        dest="faults",
        type=_fault,
        default=[],
        metavar="KIND[=VALUE][:RATE]",
        help="inject a fault into a share of requests (repeatable; syntax below)",
    )
    parser.add_argument("--seed", type=int, help="seed for fault draws and generated text")


def _fault(text: str) -> FaultRule:
    try:
        return parse_fault(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _non_negative(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _rate(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _count(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _port(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    return value
