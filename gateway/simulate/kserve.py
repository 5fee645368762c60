"""`switchyard simulate kserve`: a Triton-like KServe v2 server, HTTP and optionally gRPC.

    server = await serve_kserve(KServeOptions(versions=("2",), grpc_port=0))
    client = tritonclient.http.InferenceServerClient(server.url.removeprefix("http://"))
    grpc_client = tritonclient.grpc.InferenceServerClient(server.grpc_address)

Models are fraud scorers (see `kserve_models`); faults and `x-sim-*` headers (gRPC:
metadata keys) apply to inference requests; `GET /sim/stats` counts requests per model
and version for both transports.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Final

from gateway.simulate.faults import FAULT_SYNTAX, FaultInjector, FaultRule
from gateway.simulate.kserve_http import KServeHttp
from gateway.simulate.kserve_models import (
    DEFAULT_MODEL,
    DEFAULT_STREAM_MODEL,
    KServeStats,
    ModelRepository,
    SimModel,
    weights_for,
)
from gateway.simulate.server import SimServer, start_server

_MAX_FEATURES: Final = 4096
_MAX_STREAM: Final = 10_000


@dataclass(frozen=True, slots=True)
class KServeOptions:
    """How a KServe simulator behaves (the `simulate kserve` options)."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    decoupled_models: tuple[str, ...] = (DEFAULT_STREAM_MODEL,)
    versions: tuple[str, ...] = ("1",)
    """Versions every model serves; an unversioned request gets the highest."""
    weights: tuple[float, ...] | None = None
    """Feature weights then the bias, for every version; None: per-version presets."""
    features: int = 4
    stream_responses: int = 3
    """Responses a decoupled model streams per request (`x-sim-tokens` overrides)."""
    latency_ms: float = 0.0
    error_rate: float = 0.0
    faults: tuple[FaultRule, ...] = ()
    seed: int | None = None
    grpc_port: int | None = None
    """Also serve `inference.GRPCInferenceService` on this port (0: free-picked)."""

    def __post_init__(self) -> None:
        names = (*self.models, *self.decoupled_models)
        if not names or not all(names) or len(set(names)) != len(names):
            raise ValueError("model names must be non-empty and distinct")
        if any("/" in name for name in names):
            raise ValueError("model names must not contain '/'")
        if not self.versions or not all(v.isdigit() and int(v) > 0 for v in self.versions):
            raise ValueError("versions must be whole numbers > 0")
        if not 1 <= self.features <= _MAX_FEATURES:
            raise ValueError(f"features must be 1..{_MAX_FEATURES}")
        if self.weights is not None and len(self.weights) not in (self.features, self.features + 1):
            raise ValueError(
                f"weights needs {self.features} numbers (one per feature), optionally "
                f"then a bias; got {len(self.weights)}"
            )
        if not 0 <= self.stream_responses <= _MAX_STREAM:
            raise ValueError(f"stream_responses must be 0..{_MAX_STREAM}")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")

    def fault_rules(self) -> list[FaultRule]:
        """`faults`, with `error_rate` as the first rule."""
        rules = list(self.faults)
        if self.error_rate > 0:
            rules.insert(0, FaultRule("status", 500.0, self.error_rate))
        return rules

    def repository(self) -> ModelRepository:
        """The models these options describe."""
        versions = tuple(sorted(set(self.versions), key=int))
        weights = {}
        for version in versions:
            if self.weights is None:
                weights[version] = weights_for(version, self.features)
            elif len(self.weights) == self.features:
                weights[version] = (*self.weights, 0.0)
            else:
                weights[version] = self.weights
        models = [SimModel(name, versions, weights, self.features) for name in self.models]
        models += [
            SimModel(name, versions, weights, self.features, decoupled=True)
            for name in self.decoupled_models
        ]
        return ModelRepository(models)


class KServeServer(SimServer):
    """A running KServe simulator: the HTTP server, plus the gRPC one if asked for."""

    def __init__(self, http: SimServer, grpc: Any | None) -> None:
        # Adopt the HTTP server's listener and state: `start_server` builds a plain
        # SimServer, and this one only adds the gRPC side.
        super().__init__(http._server, http._state, http.host, http.port)
        self._grpc = grpc

    @property
    def grpc_address(self) -> str | None:
        """`host:port` of the gRPC service, None when not serving gRPC."""
        if self._grpc is None:
            return None
        address: str = self._grpc.address
        return address

    @property
    def extra_listeners(self) -> list[tuple[str, str]]:
        """(label, address) of listeners besides HTTP, announced by the command line."""
        address = self.grpc_address
        return [] if address is None else [("grpc", address)]

    async def close(self) -> None:
        """Stop the gRPC server (cancelling its calls), then the HTTP server."""
        if self._grpc is not None:
            await self._grpc.close()
        await super().close()


async def serve_kserve(
    options: KServeOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
) -> KServeServer:
    """Start a KServe v2 simulator on the running loop; `await server.close()` to stop."""
    options = options or KServeOptions()
    stats = KServeStats()
    faults = FaultInjector(options.fault_rules(), options.seed)
    repository = options.repository()
    handler = KServeHttp(repository, stats, faults, options.latency_ms / 1000.0)
    http = await start_server(handler, stats=stats, faults=faults, host=host, port=port, name=name)
    grpc = None
    if options.grpc_port is not None:
        from gateway.simulate.kserve_grpc import start_grpc

        try:
            grpc = await start_grpc(
                repository,
                stats,
                faults,
                host=host,
                port=options.grpc_port,
                latency_s=options.latency_ms / 1000.0,
                stream_responses=options.stream_responses,
                name=http.name,
            )
        except BaseException:
            await http.close()
            raise
    return KServeServer(http, grpc)


def add_kserve(backends: Any) -> None:
    """Register `simulate kserve`."""
    from gateway.simulate.options import (
        add_common_options,
        count_number,
        port_number,
        positive_number,
    )

    parser = backends.add_parser(
        "kserve",
        help="KServe v2 / Triton: /v2 metadata, health, infer (JSON + binary tensors), gRPC",
        description=(
            "Simulate NVIDIA Triton speaking the KServe v2 (Open Inference) protocol: "
            "fraud-scoring models (input 'features' FP32 [-1,F], output 'probability' "
            "FP32 [-1,1]) whose weights depend on the version, so champion (1) and "
            "challenger (2) answer differently. Decoupled models stream over gRPC "
            "ModelStreamInfer. Faults and x-sim-* headers (gRPC metadata) apply to "
            "inference; GET /sim/stats counts requests per model and version."
        ),
        epilog=FAULT_SYNTAX,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser)
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help=f"a served model (repeatable; default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--decoupled-model",
        action="append",
        dest="decoupled_models",
        metavar="NAME",
        help=f"a decoupled (streaming, gRPC only) model (repeatable; "
        f"default {DEFAULT_STREAM_MODEL})",
    )
    parser.add_argument(
        "--model-version",
        action="append",
        dest="versions",
        metavar="V",
        help="a version every model serves (repeatable; default 1; 1 = champion "
        "weights, 2 = challenger weights)",
    )
    parser.add_argument(
        "--weights",
        type=parse_weights,
        metavar="W1,..,WF[,BIAS]",
        help="feature weights (and bias) for every version, instead of the presets",
    )
    parser.add_argument(
        "--features", type=positive_number, default=4, help="input width F (default 4)"
    )
    parser.add_argument(
        "--stream-responses",
        type=count_number,
        default=3,
        help="responses per request of a decoupled model (default 3)",
    )
    parser.add_argument(
        "--grpc-port",
        type=port_number,
        metavar="PORT",
        help="also serve gRPC inference.GRPCInferenceService here (0: free port; default off)",
    )
    parser.set_defaults(handler=run_kserve)


def options_from_args(args: argparse.Namespace) -> KServeOptions:
    """KServeOptions from parsed `simulate kserve` arguments; raises ValueError."""
    models = tuple(args.models or ())
    decoupled = tuple(args.decoupled_models or ())
    if not models and not decoupled:
        models, decoupled = (DEFAULT_MODEL,), (DEFAULT_STREAM_MODEL,)
    return KServeOptions(
        models=models,
        decoupled_models=decoupled,
        versions=tuple(args.versions or ("1",)),
        weights=args.weights,
        features=args.features,
        stream_responses=args.stream_responses,
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        faults=tuple(args.faults),
        seed=args.seed,
        grpc_port=args.grpc_port,
    )


def run_kserve(args: argparse.Namespace) -> int:
    """Run the KServe simulator from parsed arguments; returns the exit status."""
    import sys

    from gateway.simulate.options import run_until_signalled

    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"switchyard-sim: {exc}", file=sys.stderr)
        return 2
    host: str = args.host
    port: int = args.port
    name: str | None = args.name
    return run_until_signalled("kserve", lambda: serve_kserve(options, host, port, name))


def parse_weights(text: str) -> tuple[float, ...]:
    """`--weights`: comma-separated finite numbers."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers"
        ) from None
    if not all(abs(value) < float("inf") for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: weights must be finite")
    return values
