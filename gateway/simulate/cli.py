"""`switchyard simulate <backend>`: run a backend simulator until SIGTERM / SIGINT.

On start it prints exactly one line to stdout, `switchyard-sim <backend> listening on
http://HOST:PORT`, which scripts and tests parse (with `--port 0` the port is free-picked).
`python -m gateway.simulate <backend> ...` runs the same commands without the rest of
the gateway's CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from gateway.simulate.bentoml import add_bentoml
from gateway.simulate.faults import FAULT_SYNTAX
from gateway.simulate.kserve import add_kserve
from gateway.simulate.kubeflow import add_kubeflow
from gateway.simulate.ollama import OllamaOptions, serve_ollama
from gateway.simulate.openai import OpenAIOptions, serve_openai
from gateway.simulate.options import (
    add_common_options,
    count_number,
    non_negative_number,
    positive_number,
    run_until_signalled,
)

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
        type=positive_number,
        default=256,
        help="capacity /metrics reports running vs waiting against (default 256)",
    )
    openai.add_argument(
        "--max-loras",
        type=count_number,
        default=0,
        help="LoRA adapters one batch holds, as vLLM's --max-loras; above 0 /metrics reports "
        "vllm:lora_requests_info for the --lora-module adapters (default 0: no LoRA)",
    )
    openai.add_argument(
        "--lora-module",
        action="append",
        dest="lora_modules",
        default=[],
        metavar="NAME",
        help="a model name that is a LoRA adapter (repeatable; vLLM's --lora-modules)",
    )
    openai.add_argument(
        "--max-model-len",
        type=positive_number,
        default=4096,
        help="context length /v1/models lists; longer prompts + max_tokens get 400 (default 4096)",
    )
    openai.add_argument(
        "--prefill-tokens-per-s",
        type=non_negative_number,
        default=0.0,
        help="prefill rate of prompt tokens not in the prefix cache, one request at a "
        "time: time to first byte grows with them (default 0: prefill is free)",
    )
    openai.add_argument(
        "--prefix-cache-blocks",
        type=count_number,
        default=8192,
        help="blocks of 16 tokens the modelled prefix cache holds (default 8192)",
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
    add_common_options(parser)
    parser.add_argument("--chunk-delay-ms", type=non_negative_number, default=0.0, help=chunk)
    parser.add_argument(
        "--tokens", type=count_number, default=16, help="tokens per answer (default 16)"
    )
    parser.add_argument(
        "--served-model", action="append", dest="served_models", metavar="NAME", help=served
    )
    parser.add_argument(
        "--embedding-dim", type=positive_number, default=8, help="embedding size (default 8)"
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
        options = OpenAIOptions(
            **_llm_options(args),
            max_num_seqs=args.max_num_seqs,
            max_loras=args.max_loras,
            lora_modules=tuple(args.lora_modules),
            max_model_len=args.max_model_len,
            prefill_tokens_per_s=args.prefill_tokens_per_s,
            prefix_cache_blocks=args.prefix_cache_blocks,
        )
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


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gateway.simulate <backend> ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.simulate", description="Run a backend simulator."
    )
    add_backends(parser.add_subparsers(dest="simulator", required=True, metavar="BACKEND"))
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
