"""`switchyard simulate bentoml`: a BentoML service (1.2+ `@bentoml.service`) over HTTP.

A fraud classifier service with two APIs, answered as BentoML's HTTP server answers:

- `POST /predict` `{"features": [[f1, .., fF], ...]}` -> `[p1, ...]`: one fraud
  probability per row (a classifier's `predict_proba[:, 1]`);
- `POST /classify` `{"features": [f1, .., fF], "threshold": 0.5}` ->
  `{"label": "fraud" | "legit", "probability": p, "version": "1"}`;
- `GET /readyz` (the `/sim/faults` health status), `/livez`, `/healthz`, `/metrics`
  (BentoML's `bentoml_service_*` names), `/docs.json` (OpenAPI), `/schema.json`.

The probability is the same logistic function of the features as the KServe
simulator's, with weights chosen by `--model-version` (1 champion, 2 challenger) or
`--weights`. Bad input gets BentoML's 400 `{"error": "1 validation error for Input",
"detail": [pydantic errors]}`; an unknown path 404, a wrong method 405 (plain text, as
Starlette answers). Faults and `x-sim-*` headers apply to the APIs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from gateway.simulate.deferred import cut_response, garbage, hang, reset
from gateway.simulate.exchange import Deferred, Headers, Request, Response
from gateway.simulate.faults import FAULT_SYNTAX, FaultInjector, FaultRule, FaultSpecError
from gateway.simulate.kserve_models import KServeStats, SimModel, weights_for
from gateway.simulate.kserve_tensor import Tensor
from gateway.simulate.server import SimServer, start_server

Result = Response | Deferred
APIS: Final = ("predict", "classify")
_TEXT: Final = b"text/plain; charset=utf-8"
_METRICS_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
_MAX_ROWS: Final = 100_000


@dataclass(frozen=True, slots=True)
class BentoMLOptions:
    """How a BentoML simulator behaves (the `simulate bentoml` options)."""

    service: str = "FraudClassifier"
    version: str = "1"
    """Picks the weights (1 champion, 2 challenger, others derived) unless `weights`."""
    weights: tuple[float, ...] | None = None
    features: int = 4
    threshold: float = 0.5
    latency_ms: float = 0.0
    error_rate: float = 0.0
    faults: tuple[FaultRule, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.service or any(c in self.service for c in "\r\n\0"):
            raise ValueError(f"invalid service name {self.service!r}")
        if not self.version or any(c in self.version for c in "\r\n\0"):
            raise ValueError(f"invalid version {self.version!r}")
        if not 1 <= self.features <= 4096:
            raise ValueError("features must be 1..4096")
        if self.weights is not None and len(self.weights) not in (self.features, self.features + 1):
            raise ValueError(f"weights needs {self.features} numbers, optionally then a bias")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        if self.latency_ms < 0 or not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("latency_ms must not be negative, error_rate must be 0..1")

    def model(self) -> SimModel:
        """The scorer behind both APIs."""
        if self.weights is None:
            weights = weights_for(self.version, self.features)
        elif len(self.weights) == self.features:
            weights = (*self.weights, 0.0)
        else:
            weights = self.weights
        return SimModel(self.service, (self.version,), {self.version: weights}, self.features)


class _Invalid(Exception):
    """Input that fails BentoML's pydantic validation; rendered as its 400 body."""

    def __init__(self, kind: str, loc: Sequence[str | int], msg: str, value: object) -> None:
        super().__init__(msg)
        self.detail = {"type": kind, "loc": list(loc), "msg": msg, "input": value}


class BentoMLSimulator:
    """A `Handler` answering like `bentoml serve` for the fraud classifier service."""

    def __init__(self, options: BentoMLOptions, stats: KServeStats, faults: FaultInjector) -> None:
        self._options = options
        self._stats = stats
        self._faults = faults
        self._model = options.model()
        self._latency_s = options.latency_ms / 1000.0
        self._server_header: Headers = (
            (b"server", f"BentoML Service/{options.service}".encode("latin-1")),
        )
        self._responses: dict[tuple[str, int], int] = {}
        self._apis: dict[str, Callable[[Any], object]] = {
            "/predict": self._predict,
            "/classify": self._classify,
        }
        self._gets: dict[str, Callable[[], Response]] = {
            "/readyz": self._readyz,
            "/livez": lambda: Response(200, b"\n", _TEXT),
            "/healthz": lambda: Response(200, b"\n", _TEXT),
            "/metrics": self._metrics,
            "/docs.json": lambda: Response(200, orjson.dumps(_openapi(options))),
            "/schema.json": lambda: Response(200, orjson.dumps(_schema(options))),
        }

    def __call__(self, request: Request) -> Result:
        """Route a request like BentoML's Starlette app."""
        path, method = request.path, request.method
        api = self._apis.get(path)
        if api is not None:
            if method != "POST":
                return Response(405, b"Method Not Allowed", _TEXT)
            return self._call_api(request, path, api)
        get = self._gets.get(path)
        if get is not None:
            if method not in ("GET", "HEAD"):
                return Response(405, b"Method Not Allowed", _TEXT)
            return get()
        return Response(404, b"Not Found", _TEXT)

    # -- APIs --------------------------------------------------------------------------

    def _call_api(self, request: Request, path: str, api: Callable[[Any], object]) -> Result:
        try:
            plan = self._faults.plan(request.headers)
        except FaultSpecError as exc:
            return self._count(path, _bento_error(400, str(exc)))
        stats = self._stats
        stats.count_model(self._options.service, self._options.version)
        stats.count_faults(plan)
        latency = self._latency_s if plan.latency_s is None else plan.latency_s
        if plan.hang:
            return hang
        if plan.reset:
            return reset(latency)
        if plan.garbage:
            return garbage(latency)
        if plan.status is not None:
            return replace(self._count(path, _bento_error(plan.status)), delay=latency)
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            invalid = _Invalid(
                "json_invalid", (), f"Invalid JSON: {exc}", request.body[:100].decode("latin-1")
            )
            return self._count(path, _validation_error(invalid))
        try:
            if not isinstance(body, dict):
                raise _Invalid("model_type", (), "Input should be a valid dictionary", body)
            answer = api(body)
        except _Invalid as exc:
            return self._count(path, _validation_error(exc))
        response = Response(200, orjson.dumps(answer), headers=self._server_header, delay=latency)
        self._count(path, response)
        return response if plan.cut_after is None else cut_response(response)

    def _predict(self, body: dict[str, Any]) -> object:
        rows = body.get("features", _MISSING)
        if rows is _MISSING:
            raise _Invalid("missing", ("features",), "Field required", body)
        if not isinstance(rows, list) or len(rows) > _MAX_ROWS:
            raise _Invalid("list_type", ("features",), "Input should be a valid list", rows)
        flat: list[float] = []
        for index, row in enumerate(rows):
            flat.extend(self._row(row, ("features", index)))
        return list(self._score(flat, len(rows)))

    def _classify(self, body: dict[str, Any]) -> object:
        row = body.get("features", _MISSING)
        if row is _MISSING:
            raise _Invalid("missing", ("features",), "Field required", body)
        threshold = body.get("threshold", self._options.threshold)
        if not _is_number(threshold) or not 0 <= threshold <= 1:
            raise _Invalid(
                "less_than_equal", ("threshold",), "Input should be a number from 0 to 1", threshold
            )
        [probability] = self._score(self._row(row, ("features",)), 1)
        return {
            "label": "fraud" if probability >= threshold else "legit",
            "probability": probability,
            "version": self._options.version,
        }

    def _row(self, row: object, loc: tuple[str | int, ...]) -> list[float]:
        width = self._options.features
        if not isinstance(row, list):
            raise _Invalid("list_type", loc, "Input should be a valid list", row)
        if len(row) != width:
            kind = "too_short" if len(row) < width else "too_long"
            message = f"List should have {width} items after validation, not {len(row)}"
            raise _Invalid(kind, loc, message, row)
        for index, value in enumerate(row):
            if not _is_number(value):
                raise _Invalid("float_type", (*loc, index), "Input should be a valid number", value)
        return row

    def _score(self, flat: list[float], rows: int) -> Sequence[float]:
        model = self._model
        tensor = Tensor("features", "FP32", (rows, model.features), flat)
        [output] = model.infer(self._options.version, {"features": tensor}, "")
        return output.values

    # -- health and metrics ------------------------------------------------------------

    def _readyz(self) -> Response:
        status = self._faults.health_status
        if status == 200:
            return Response(200, b"\n", _TEXT)
        return Response(status, b"Runners are not ready.", _TEXT)

    def _count(self, path: str, response: Response) -> Response:
        key = (path, response.status)
        self._responses[key] = self._responses.get(key, 0) + 1
        return response

    def _metrics(self) -> Response:
        service = self._options.service
        lines = [
            "# HELP bentoml_service_request_total Multiprocess metric",
            "# TYPE bentoml_service_request_total counter",
        ]
        for (path, status), count in sorted(self._responses.items()):
            lines.append(
                f'bentoml_service_request_total{{endpoint="{path}",http_response_code="{status}",'
                f'service_name="{service}",service_version="{self._options.version}"}} {count}'
            )
        lines += [
            "# HELP bentoml_service_request_in_progress Multiprocess metric",
            "# TYPE bentoml_service_request_in_progress gauge",
        ]
        for path in self._apis:
            live = self._stats.in_flight_for((path,))
            lines.append(
                f'bentoml_service_request_in_progress{{endpoint="{path}",'
                f'service_name="{service}",service_version="{self._options.version}"}} {live}'
            )
        return Response(200, ("\n".join(lines) + "\n").encode(), _METRICS_TYPE)


_MISSING: Final = object()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _validation_error(exc: _Invalid) -> Response:
    body = {"error": "1 validation error for Input", "detail": [exc.detail]}
    return Response(400, orjson.dumps(body))


def _bento_error(status: int, message: str | None = None) -> Response:
    """BentoML's bodies: 4xx carry the message, 500 the generic text, other 5xx ""."""
    if status < 500:
        text = message or f"simulated failure: {status}"
        return Response(
            status, orjson.dumps({"error": f"BentoService error handling API request: {text}"})
        )
    if status == 500:
        generic = "An unexpected error has occurred, please check the server log."
        return Response(500, orjson.dumps({"error": generic}))
    return Response(status, b'""')


def _openapi(options: BentoMLOptions) -> dict[str, object]:
    def operation(api: str) -> dict[str, object]:
        return {
            "post": {
                "operationId": f"{options.service}__{api}",
                "tags": ["Service APIs"],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": "Successful Response"}},
            }
        }

    paths: dict[str, object] = {f"/{api}": operation(api) for api in APIS}
    for probe in ("/healthz", "/livez", "/readyz", "/metrics"):
        paths[probe] = {"get": {"tags": ["Infrastructure"], "responses": {"200": {}}}}
    return {
        "openapi": "3.0.2",
        "info": {"title": options.service, "version": options.version},
        "paths": paths,
    }


def _schema(options: BentoMLOptions) -> dict[str, object]:
    """`/schema.json`, the shape `bentoml.SyncHTTPClient` reads to learn the APIs."""
    numbers: dict[str, object] = {"type": "array", "items": {"type": "number"}}

    def route(api: str, inputs: dict[str, object], output: dict[str, object]) -> object:
        return {
            "name": api,
            "route": f"/{api}",
            "batchable": False,
            "input": {
                "title": "Input",
                "type": "object",
                "properties": inputs,
                "required": ["features"],
            },
            "output": {**output, "media_type": "application/json", "is_stream": False},
        }

    return {
        "name": options.service,
        "type": "service",
        "routes": [
            route("predict", {"features": {"type": "array", "items": numbers}}, numbers),
            route(
                "classify",
                {
                    "features": numbers,
                    "threshold": {"type": "number", "default": options.threshold},
                },
                {"type": "object"},
            ),
        ],
    }


async def serve_bentoml(
    options: BentoMLOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
) -> SimServer:
    """Start a BentoML simulator on the running loop; `await server.close()` to stop."""
    options = options or BentoMLOptions()
    stats = KServeStats()
    faults = FaultInjector(_fault_rules(options), options.seed)
    handler = BentoMLSimulator(options, stats, faults)
    return await start_server(handler, stats=stats, faults=faults, host=host, port=port, name=name)


def _fault_rules(options: BentoMLOptions) -> list[FaultRule]:
    rules = list(options.faults)
    if options.error_rate > 0:
        rules.insert(0, FaultRule("status", 500.0, options.error_rate))
    return rules


def add_bentoml(backends: Any) -> None:
    """Register `simulate bentoml`."""
    from gateway.simulate.kserve import parse_weights
    from gateway.simulate.options import add_common_options, positive_number, rate_number

    parser = backends.add_parser(
        "bentoml",
        help="BentoML service: POST /predict and /classify (JSON), /readyz, /metrics",
        description=__doc__,
        epilog=FAULT_SYNTAX,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser)
    parser.add_argument("--service", default="FraudClassifier", help="service name")
    parser.add_argument(
        "--model-version",
        dest="version",
        default="1",
        help="model version: picks the weights (1 champion, 2 challenger; default 1)",
    )
    parser.add_argument(
        "--weights",
        type=parse_weights,
        metavar="W1,..,WF[,BIAS]",
        help="feature weights (and bias) instead of the version's presets",
    )
    parser.add_argument(
        "--features", type=positive_number, default=4, help="input width (default 4)"
    )
    parser.add_argument(
        "--threshold", type=rate_number, default=0.5, help="classify's default threshold (0.5)"
    )
    parser.set_defaults(handler=run_bentoml)


def run_bentoml(args: argparse.Namespace) -> int:
    """Run the BentoML simulator from parsed arguments; returns the exit status."""
    from gateway.simulate.options import run_until_signalled

    try:
        options = BentoMLOptions(
            service=args.service,
            version=args.version,
            weights=args.weights,
            features=args.features,
            threshold=args.threshold,
            latency_ms=args.latency_ms,
            error_rate=args.error_rate,
            faults=tuple(args.faults),
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"switchyard-sim: {exc}", file=sys.stderr)
        return 2
    host: str = args.host
    port: int = args.port
    name: str | None = args.name
    return run_until_signalled("bentoml", lambda: serve_bentoml(options, host, port, name))
