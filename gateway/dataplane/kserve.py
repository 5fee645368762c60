"""KServe v2 / Open Inference Protocol over HTTP: `/v2/...`, as tritonclient calls it.

The route is the model name in the URL (`/v2/models/{route}/infer`); the backend gets
the variant's model name and version instead (`Variant.model_path`), so a client never
changes a URL when a version is promoted. Inference requests get the full traffic
control (decide, canary, overrides, fallback, retries, metrics, drift sampling); the
body goes upstream byte for byte, the binary tensor extension included: with an
`Inference-Header-Content-Length` header only that many leading bytes are JSON, and
only they are parsed. Model metadata, config and readiness are proxied the same way,
the metadata's `name` rewritten back to the route name. Server liveness and readiness
are the gateway's own.

Validation is structural and cheap (no pass over tensor values): every input names a
v2 datatype, a shape of non-negative integers and as many elements (or binary bytes)
as the shape holds. Whether values fit the datatype is the backend's business.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import orjson

from gateway import __version__
from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.fronts import parse_json_object
from gateway.dataplane.styles import KServeStyle
from gateway.errors import (
    BadRequest,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from gateway.kserve_types import ITEM_SIZE, STRUCT_CODES

if TYPE_CHECKING:
    from gateway.dataplane.http.server import ClientConnection
    from gateway.dataplane.http.wire import Request
    from gateway.dataplane.proxy import ProxyPlane
    from gateway.dataplane.snapshot import Route

PROTOCOL = "kserve-v2"
_DATATYPE_LIST = ", ".join(ITEM_SIZE)
_MODELS = b"/v2/models/"
_VERSIONS = b"/versions/"
_HEADER_LENGTH = b"inference-header-content-length"
_ACTIONS = frozenset({b"/infer", b"/ready", b"/config"})
MAX_DECODED_ROWS = 256  # drift reads at most this many rows of one request
_SERVED = (
    "GET /v2, GET /v2/health/live, GET /v2/health/ready, GET /v2/models/{model}"
    "[/versions/{v}], GET .../ready, GET .../config, POST .../infer"
)
_SERVER_METADATA = orjson.dumps(
    {"name": "switchyard", "version": __version__, "extensions": ["binary_tensor_data"]}
)


class NameRewrite:
    """Rewrites the `name` of model metadata and config to the route the client asked
    for: the backend answers with its own model name, which the client never used."""

    front = PROTOCOL
    stream = False

    def __init__(self, route: str) -> None:
        self.route = route
        self.ok = True
        self._parts: list[bytes] = []

    def start(self, status: int) -> None:
        self.ok = status == 200

    def content_type(self) -> bytes:
        return b"application/json"

    def feed(self, data: bytes) -> bytes:
        self._parts.append(data)
        return b""  # the body is whole only at the end

    def finish(self) -> bytes:
        body = b"".join(self._parts)
        if not self.ok:
            return body
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body  # not ours to judge: relay what the backend said
        if not isinstance(parsed, dict) or "name" not in parsed:
            return body
        parsed["name"] = self.route
        return orjson.dumps(parsed)


def element_count(data: Any) -> int:
    """Elements in v2 tensor data: a flat list, row-major nested lists, or a scalar."""
    if not isinstance(data, list):
        return 1
    if not data or not isinstance(data[0], list):
        return len(data)
    return sum(element_count(row) for row in data)


def check_infer_request(body: dict[str, Any], binary_bytes: int = 0) -> None:
    """Raise `BadRequest` naming the input and field unless `body` is a well-formed v2
    inference request; `binary_bytes` follow its JSON header (binary extension)."""
    inputs = body.get("inputs")
    if type(inputs) is not list or not inputs:
        raise BadRequest("'inputs' is required: a non-empty list of input tensors", param="inputs")
    declared = 0
    # The happy path builds no strings: error texts are made only when raised.
    for i, tensor in enumerate(inputs):
        if type(tensor) is not dict:
            raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype, data")
        name = tensor.get("name")
        if type(name) is not str or not name:
            raise BadRequest(f"inputs[{i}].name is required: the input tensor's name")
        shape = tensor.get("shape")
        if type(shape) is not list:
            raise BadRequest(
                f"{_where(i, name)}.shape is required: a list of non-negative integers"
            )
        count = 1
        for dim in shape:
            if type(dim) is not int or dim < 0:  # bool is an int subclass: excluded
                raise BadRequest(
                    f"{_where(i, name)}.shape must be a list of non-negative integers, "
                    f"got {shape!r:.100}"
                )
            count *= dim
        datatype = tensor.get("datatype")
        item = ITEM_SIZE.get(datatype) if type(datatype) is str else None
        if item is None:
            raise BadRequest(
                f"{_where(i, name)}.datatype {datatype!r:.40} is not a v2 datatype "
                f"({_DATATYPE_LIST})"
            )
        params = tensor.get("parameters")
        if params is not None:
            if type(params) is not dict:
                raise BadRequest(f"{_where(i, name)}.parameters must be an object")
            size = params.get("binary_data_size")
            if size is not None:
                if type(size) is not int or size < 0:
                    raise BadRequest(
                        f"{_where(i, name)}.parameters.binary_data_size must be a byte count"
                    )
                if item and size != count * item:
                    raise BadRequest(
                        f"{_where(i, name)}: binary_data_size is {size} bytes, but shape "
                        f"{shape} of {datatype} needs {count * item}"
                    )
                declared += size
                continue
            if "shared_memory_region" in params:
                continue  # the data lives in the backend's shared memory
        data = tensor.get("data")
        if data is None:
            raise BadRequest(f"{_where(i, name)} has no 'data' (nor parameters.binary_data_size)")
        found = (
            len(data)
            if type(data) is list and (not data or type(data[0]) is not list)
            else (element_count(data))
        )
        if found != count:
            raise BadRequest(
                f"{_where(i, name)}: shape {shape} holds {count} elements, but 'data' has {found}"
            )
    if declared != binary_bytes:
        raise BadRequest(
            f"the inputs' binary_data_size add up to {declared} bytes, but {binary_bytes} "
            "bytes follow the JSON header (Inference-Header-Content-Length)"
        )
    outputs = body.get("outputs")
    if outputs is not None:
        if type(outputs) is not list:
            raise BadRequest("'outputs' must be a list of requested outputs", param="outputs")
        for i, out in enumerate(outputs):
            if type(out) is not dict or type(out.get("name")) is not str:
                raise BadRequest(f"outputs[{i}] must be an object with a 'name'")


def _where(i: int, name: str) -> str:
    return f"inputs[{i}] ('{name[:64]}')"


def parse_infer_body(request: Request) -> tuple[dict[str, Any] | None, int]:
    """The JSON part of an inference request, checked, and its length (binary tensors
    follow it); None when the body is content-encoded (gzip, deflate): then it goes
    upstream unread."""
    fields = request.fields or {}
    body = request.body
    encoding = fields.get(b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        return None, len(body)
    raw_length = fields.get(_HEADER_LENGTH)
    if raw_length is None:
        parsed = parse_json_object(body)
        check_infer_request(parsed)
        return parsed, len(body)
    try:
        length = int(raw_length)
    except ValueError:
        raise BadRequest(
            "Inference-Header-Content-Length must be the byte length of the JSON header, "
            f"not {raw_length[:40].decode('latin-1')!r}"
        ) from None
    if not 0 < length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {length} does not fit the body of {len(body)} bytes"
        )
    try:
        # A view, not a slice: the binary tensors after the header are never copied.
        parsed = orjson.loads(memoryview(body)[:length])
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(
            f"the JSON header (the first {length} bytes, Inference-Header-Content-Length) "
            f"is not valid JSON: {exc}"
        ) from None
    if not isinstance(parsed, dict):
        raise InvalidJSON("the inference request's JSON header must be an object")
    check_infer_request(parsed, len(body) - length)
    return parsed, length


class BinaryInferBody(dict[str, Any]):
    """A binary-extension request's JSON header, as the drift tap samples it: its binary
    inputs read as `data` lists once drift extraction asks for `inputs`, off the
    request path and for sampled requests only (unsampled ones are dropped at once)."""

    def __init__(self, header: dict[str, Any], raw: memoryview) -> None:
        super().__init__(header)
        self._raw: memoryview | None = raw

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._raw
        if key == "inputs" and raw is not None:
            self._raw = None  # decoded once; the request body is released
            self["inputs"] = decode_binary_inputs(self["inputs"], raw)  # checked: a list
        return super().get(key, default)


def decode_binary_inputs(inputs: list[dict[str, Any]], raw: memoryview) -> list[dict[str, Any]]:
    """Checked v2 inputs with their binary data decoded into `data` (the first
    `MAX_DECODED_ROWS` rows; BYTES and BF16 stay undecoded)."""
    out: list[dict[str, Any]] = []
    offset = 0
    for tensor in inputs:
        params = tensor.get("parameters")
        size = params.get("binary_data_size") if params else None
        if size is None:
            out.append(tensor)
            continue
        chunk = raw[offset : offset + size]
        offset += size
        code = STRUCT_CODES.get(tensor["datatype"])
        shape: list[int] = tensor["shape"]
        if code is None or not shape:
            out.append(tensor)
            continue
        item = ITEM_SIZE[tensor["datatype"]]
        rows = min(shape[0], MAX_DECODED_ROWS) if len(shape) > 1 else 1
        count = size // item
        keep = count if len(shape) == 1 else (count // shape[0] if shape[0] else 0) * rows
        keep = min(keep, MAX_DECODED_ROWS * 256)
        values = list(struct.unpack(f"<{keep}{code}", chunk[: keep * item]))
        kept_shape = [rows, *shape[1:]] if len(shape) > 1 else [keep]
        out.append({**tensor, "shape": kept_shape, "data": values})
    return out


def split_model_path(rest: bytes) -> tuple[str, bytes, bytes]:
    """(model, version, action) of what follows `/v2/models/`: `NAME[/versions/V][/ACTION]`
    with ACTION one of infer, ready, config, or none (metadata)."""
    action = b""
    at = rest.rfind(b"/")
    if at > 0:
        last = rest[at:]
        if last in _ACTIONS:
            action, rest = last, rest[:at]
    version = b""
    at = rest.rfind(_VERSIONS) if b"/v" in rest else -1
    if at > 0:
        version, rest = rest[at + len(_VERSIONS) :], rest[:at]
        if not version or b"/" in version:
            raise NotFound(
                f"no KServe v2 endpoint at {_shown(rest)}; this gateway serves {_SERVED}"
            )
    if b"%" in rest:
        rest = unquote_to_bytes(rest)
    return rest.decode("utf-8", "replace"), version, action


class KServeFront:
    """`/v2/...`: the KServe v2 inference protocol over HTTP."""

    style = KServeStyle()

    def __init__(self, plane: ProxyPlane) -> None:
        self.plane = plane

    def handle(self, conn: ClientConnection, request: Request) -> None:
        path = request.path
        if path.startswith(_MODELS):
            self._model(conn, request, path[len(_MODELS) :])
            return
        if path in (b"/v2", b"/v2/"):
            self._get_only(request, "GET /v2")
            conn.respond(200, _SERVER_METADATA)
            return
        if path == b"/v2/health/live":
            self._get_only(request, "GET /v2/health/live")
            conn.respond(200, b"")
            return
        if path == b"/v2/health/ready":
            self._get_only(request, "GET /v2/health/ready")
            plane = self.plane
            if plane.draining:
                conn.respond(400, b'{"error":"the gateway is shutting down"}')
            elif not plane.ref.current.routes:
                conn.respond(400, b'{"error":"the gateway serves no routes"}')
            else:
                conn.respond(200, b"")
            return
        raise NotFound(f"no KServe v2 endpoint at {_shown(path)}; this gateway serves {_SERVED}")

    @staticmethod
    def _get_only(request: Request, what: str) -> None:
        if request.method != b"GET":
            raise MethodNotAllowed(f"{what} accepts GET only")

    def _model(self, conn: ClientConnection, request: Request, rest: bytes) -> None:
        name, version, action = split_model_path(rest)
        if action == b"/infer":
            if request.method != b"POST":
                raise MethodNotAllowed("POST .../infer is the only method for inference")
        else:
            self._get_only(request, "GET /v2/models/{model}[/ready|/config]")
        plane = self.plane
        snap = plane.ref.current
        route = snap.routes.get(name)
        if route is None:
            shown = name if len(name) <= 128 else name[:128] + "..."
            raise NotFound(f"model '{shown}' is not served by any route of this gateway")
        if route.protocol != PROTOCOL:
            raise BadRequest(f"route '{name}' speaks {route.protocol}, not the KServe v2 protocol")
        parsed: dict[str, Any] | None = None
        header_length = 0
        if action == b"/infer":
            limit = route.max_body_bytes
            if limit is not None and len(request.body) > limit:
                raise PayloadTooLarge(
                    f"request body of {len(request.body)} bytes exceeds route '{name}' limit "
                    f"of {limit} bytes"
                )
            parsed, header_length = parse_infer_body(request)
        decision = decide(
            snap, RequestHead(name, request.headers, parsed, request.fields), plane.rng
        )
        check = decision.variant.signature
        if check is not None and parsed is not None:
            check.check_v2(parsed)  # the version it was routed to: 400 naming the input
        targets = model_targets(route, version, action + request.query)
        if parsed is not None:
            body = request.body
            plane.tap.offer(
                decision,
                parsed
                if header_length == len(body)
                else BinaryInferBody(parsed, memoryview(body)[header_length:]),
            )
        rewrite = None if action in (b"/infer", b"/ready") else _rewriter(name)
        plane.proxy(
            conn,
            request,
            decision,
            request.body,
            self.style,
            parsed,
            targets=targets,
            response_filter=rewrite,
        )


def model_targets(route: Route, version: bytes, tail: bytes) -> tuple[bytes, ...]:
    """The backend path per variant: its model (and pinned version, else the client's)."""
    asked = _VERSIONS + version if version else b""
    return tuple(
        _MODELS + v.model_path + (b"" if v.model_version else asked) + tail for v in route.variants
    )


def _rewriter(route: str) -> Callable[[], NameRewrite]:
    def make() -> NameRewrite:
        return NameRewrite(route)

    return make


def _shown(path: bytes) -> str:
    return path.decode("utf-8", "replace")[:200]
