"""KServe v2 / Open Inference Protocol over HTTP, answered the way Triton answers it.

Endpoints: `GET /v2`, `GET /v2/health/live`, `GET /v2/health/ready`,
`GET /v2/models/{m}[/versions/{v}]` (metadata), `.../ready`, `.../config`,
`POST .../infer` (JSON tensors and the binary tensor data extension, gzip/deflate
request and response compression as tritonclient sends it) and
`POST /v2/repository/index`. Errors are Triton's `{"error": "..."}` with its status
codes: 400 for a bad request or an unknown model's metadata/ready, 404 for an unknown
model's infer or an unknown version, 501 for
`/infer` on a decoupled model.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final
from urllib.parse import unquote

import orjson

from gateway.simulate.deferred import cut_response, garbage, hang, reset
from gateway.simulate.exchange import Deferred, Headers, Request, Response
from gateway.simulate.faults import FaultInjector, FaultSpecError
from gateway.simulate.kserve_models import (
    KServeStats,
    ModelRepository,
    SimModel,
    request_tag,
)
from gateway.simulate.kserve_tensor import (
    Tensor,
    TensorError,
    check_shape,
    element_count,
    flatten_json,
    pack,
    unpack,
)

Result = Response | Deferred
MODELS_PREFIX: Final = "/v2/models/"
BINARY: Final = b"application/octet-stream"
HEADER_LENGTH: Final = "inference-header-content-length"
SERVER_NAME: Final = "triton"
SERVER_VERSION: Final = "2.59.0"
# What Triton lists; the simulator implements the ones the clients use for inference
# (binary_tensor_data, parameters, model_configuration, model_repository's index).
EXTENSIONS: Final = (
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
)
_EMPTY: Final = Response(200, b"", content_type=b"")


def server_metadata() -> dict[str, object]:
    """The `$metadata_server_response` JSON object (also the gRPC ServerMetadata)."""
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}


class KServeHttp:
    """A `Handler` speaking the KServe v2 HTTP protocol for a `ModelRepository`."""

    def __init__(
        self,
        repository: ModelRepository,
        stats: KServeStats,
        faults: FaultInjector,
        latency_s: float,
    ) -> None:
        self._repository = repository
        self._stats = stats
        self._faults = faults
        self._latency_s = latency_s
        self._server_body = orjson.dumps(server_metadata())
        self._routes: dict[tuple[str, str], Callable[[Request], Result]] = {
            ("GET", "/v2"): lambda _: Response(200, self._server_body),
            ("GET", "/v2/health/live"): lambda _: _EMPTY,
            ("GET", "/v2/health/ready"): self._ready,
            ("POST", "/v2/repository/index"): self._index,
        }
        self._paths = frozenset(path for _, path in self._routes)

    def __call__(self, request: Request) -> Result:
        """Route a request; unknown paths get 404, a wrong method 405."""
        path = request.path
        if path.startswith(MODELS_PREFIX):
            return self._model_route(request)
        route = self._routes.get((request.method, path))
        if route is not None:
            return route(request)
        if path in self._paths:
            return _error(405, "Method Not Allowed")
        return _error(404, "Not Found")

    def _ready(self, request: Request) -> Result:
        status = self._faults.health_status
        return _EMPTY if status == 200 else Response(status, b"", content_type=b"")

    def _index(self, request: Request) -> Result:
        return Response(200, orjson.dumps(self._repository.index()))

    def _model_route(self, request: Request) -> Result:
        parts = request.path[len(MODELS_PREFIX) :].split("/")
        name, version, action = unquote(parts[0]), "", ""
        if len(parts) >= 3 and parts[1] == "versions":
            version = unquote(parts[2])
            rest = parts[3:]
        else:
            rest = parts[1:]
        if len(rest) > 1 or (rest and rest[0] not in ("ready", "infer", "config")) or not name:
            return _error(404, "Not Found")
        action = rest[0] if rest else "metadata"
        wanted = "POST" if action == "infer" else "GET"
        if request.method != wanted:
            return _error(405, "Method Not Allowed")
        try:
            model, resolved = self._repository.resolve(name, version)
        except TensorError as exc:
            # Real Triton (2.51, seen in tests/backends/triton) answers an unknown model
            # with 404 on /infer but 400 on its metadata, config and ready paths.
            status = 404 if action == "infer" else exc.status
            return _error(status, str(exc))
        if action == "infer":
            return self._infer(request, model, resolved)
        if action == "ready":
            return self._ready(request)
        if action == "config":
            return Response(200, orjson.dumps(model.config()))
        return Response(200, orjson.dumps(model.metadata()))

    # -- inference ---------------------------------------------------------------------

    def _infer(self, request: Request, model: SimModel, version: str) -> Result:
        try:
            plan = self._faults.plan(request.headers)
        except FaultSpecError as exc:
            return _error(400, str(exc))
        if model.decoupled:
            return _error(
                501, "HTTP end point doesn't support models with decoupled transaction policy"
            )
        stats = self._stats
        stats.count_model(model.name, version)
        latency = self._latency_s
        if plan.latency_s is not None:
            latency = plan.latency_s
        if (
            plan.status is not None
            or plan.hang
            or plan.garbage
            or plan.reset
            or plan.cut_after is not None
        ):
            stats.count_faults(plan)
            if plan.hang:
                return hang
            if plan.reset:
                return reset(latency)
            if plan.garbage:
                return garbage(latency)
            if plan.status is not None:
                failure = _error(plan.status, f"simulated failure: {plan.status}")
                return replace(failure, delay=latency)
        elif plan.latency_s is not None:
            stats.count_faults(plan)
        try:
            response = self._answer(request, model, version)
        except TensorError as exc:
            return _error(exc.status, str(exc))
        response.delay = latency
        return response if plan.cut_after is None else cut_response(response)

    def _answer(self, request: Request, model: SimModel, version: str) -> Response:
        body = _decompress(request)
        header, binary = _split_body(body, request.headers.get(HEADER_LENGTH))
        try:
            payload = orjson.loads(header)
        except orjson.JSONDecodeError as exc:
            raise TensorError(f"failed to parse the request JSON buffer: {exc}") from None
        if not isinstance(payload, dict):
            raise TensorError("failed to parse the request JSON buffer: not a JSON object")
        request_id = payload.get("id", "")
        if not isinstance(request_id, str):
            raise TensorError("'id' must be a string")
        tag = request_tag(request_id)
        inputs = _decode_inputs(payload.get("inputs"), binary, model, tag)
        outputs = model.infer(version, inputs, tag)
        wanted = _requested_outputs(payload, model, tag)
        reply: dict[str, Any] = {"model_name": model.name, "model_version": version}
        if request_id:
            reply["id"] = request_id
        rendered: list[dict[str, Any]] = []
        raws: list[bytes] = []
        for tensor in outputs:
            as_binary = wanted.get(tensor.name)
            if as_binary is None:
                continue
            item: dict[str, Any] = {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
            }
            if as_binary:
                raw = pack(tensor.datatype, tensor.values)
                item["parameters"] = {"binary_data_size": len(raw)}
                raws.append(raw)
            else:
                item["data"] = list(tensor.values)
            rendered.append(item)
        reply["outputs"] = rendered
        head = orjson.dumps(reply)
        if not raws:
            return _compressed(request, Response(200, head))
        headers: Headers = ((b"inference-header-content-length", b"%d" % len(head)),)
        return _compressed(request, Response(200, head + b"".join(raws), BINARY, headers))


def _decode_inputs(
    raw_inputs: object, binary: memoryview, model: SimModel, tag: str
) -> dict[str, Tensor]:
    if not isinstance(raw_inputs, list):
        raise TensorError("Unable to parse 'inputs': expected a list of input tensors")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for index, item in enumerate(raw_inputs):
        where = f"input {index}"
        if not isinstance(item, dict):
            raise TensorError(f"Unable to parse 'inputs': {where} is not an object")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise TensorError(
                f"Unable to parse 'inputs': {where} needs string 'name' and 'datatype'"
            )
        shape = check_shape(item.get("shape"), f"input '{name}'")
        if name in inputs:
            raise TensorError(f"{tag}input '{name}' already exists in request")
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise TensorError(f"input '{name}': 'parameters' must be an object")
        size = parameters.get("binary_data_size")
        spec = model.input_spec(name, datatype, shape, tag)
        count = element_count(shape)
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise TensorError(
                    f"input '{name}': binary_data_size must be a non-negative integer"
                )
            if offset + size > len(binary):
                raise TensorError(
                    f"unexpected end of binary data for input '{name}': it declares {size} "
                    f"bytes but {len(binary) - offset} remain"
                )
            values: Any = unpack(spec.datatype, binary[offset : offset + size], count, name)
            offset += size
        elif "data" in item:
            values = flatten_json(item["data"], spec.datatype, count, name)
        else:
            raise TensorError(f"{tag}input '{name}' has neither 'data' nor binary_data_size")
        inputs[name] = Tensor(name, spec.datatype, shape, values)
    if offset != len(binary):
        raise TensorError(f"unexpected additional input data for model '{model.name}'")
    return inputs


def _requested_outputs(payload: dict[str, Any], model: SimModel, tag: str) -> dict[str, bool]:
    """Output name -> send as binary, per the request's `outputs` and parameters."""
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise TensorError("'parameters' must be an object")
    default_binary = parameters.get("binary_data_output", False) is True
    requested = payload.get("outputs")
    if requested is None:
        return {spec.name: default_binary for spec in model.outputs}
    if not isinstance(requested, list):
        raise TensorError("Unable to parse 'outputs': expected a list")
    wanted: dict[str, bool] = {}
    for item in requested:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise TensorError("Unable to parse 'outputs': every output needs a string 'name'")
        spec = model.output_spec(item["name"], tag)
        options = item.get("parameters") or {}
        if not isinstance(options, dict):
            raise TensorError(f"output '{spec.name}': 'parameters' must be an object")
        if options.get("classification"):
            raise TensorError(f"output '{spec.name}': classification is not simulated")
        as_binary = options.get("binary_data", default_binary)
        if not isinstance(as_binary, bool):
            raise TensorError(f"output '{spec.name}': binary_data must be a boolean")
        wanted[spec.name] = as_binary
    return wanted


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise TensorError(
            f"Inference-Header-Content-Length {header_length!r} must be a whole number "
            f"between 0 and the body size {len(body)}"
        )
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def _decompress(request: Request) -> bytes:
    encoding = request.headers.get("content-encoding")
    if encoding is None or encoding == "identity":
        return request.body
    try:
        if encoding == "gzip":
            return gzip.decompress(request.body)
        if encoding == "deflate":
            return zlib.decompress(request.body)
    except (OSError, EOFError, zlib.error) as exc:
        raise TensorError(f"failed to decompress the {encoding} request body: {exc}") from None
    raise TensorError(f"unsupported Content-Encoding {encoding!r} (use gzip or deflate)")


def _compressed(request: Request, response: Response) -> Response:
    accept = request.headers.get("accept-encoding")
    if accept is None:
        return response
    if "gzip" in accept:
        coding, body = b"gzip", gzip.compress(response.body, compresslevel=1)
    elif "deflate" in accept:
        coding, body = b"deflate", zlib.compress(response.body, 1)
    else:
        return response
    headers = (*response.headers, (b"content-encoding", coding))
    return Response(response.status, body, response.content_type, headers)


def _error(status: int, message: str) -> Response:
    return Response(status, orjson.dumps({"error": message}))
