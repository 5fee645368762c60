"""The KServe v2 gRPC front: `inference.GRPCInferenceService` for tritonclient.grpc.

grpcio's asyncio server runs on the data plane's event loop (uvloop works: grpc.aio
polls its completion queue from its own thread and wakes the loop through a socket
the loop watches), so gRPC calls share the snapshot, endpoint health, retry budgets and
metric series with the HTTP fronts without any locking.

Messages travel as raw bytes (generic handlers, no protobuf classes): routing needs
only the model name and version, which `grpcwire` reads and rewrites on the wire, so
tensors are never decoded. Server-level calls (ServerLive, ServerReady,
ServerMetadata) are answered by the gateway; model calls (ModelInfer, ModelMetadata,
ModelReady, ModelConfig) are routed like HTTP requests: `decide` on the requested
model name (the route) with gRPC metadata as headers (sticky keys, overrides), then
`pick`, retries and fallbacks before any response, passive ejection and the same
metrics (see `grpccall`). ModelStreamInfer is relayed by `grpcstream`.

ModelInfer calls of routes with shadows are sampled and copied like HTTP inference
requests (`ShadowMirror.grpc_calls`): the copies go out right after the primary, are
never awaited, and the primary's reply (or how it failed) is handed to the mirror for
the comparison. ModelStreamInfer is not copied: its replies are as many as a decoupled
model chooses to send, which no single copy over the shadows' HTTP endpoints (the
only address a shadow has) can reproduce, and KServe v2 HTTP has no streaming infer.

Responses name the route again, never the backend's model, and carry the
x-switchyard-route/variant/backend/version entries in trailing metadata (free: they
travel with the status; initial metadata would cost an extra write per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from gateway import __version__
from gateway.dataplane.decide import Decision, RequestHead, decide
from gateway.dataplane.grpc.call import (
    HTTP_STATUS,
    NOBODY,
    SERVICE,
    GrpcCall,
    Who,
    failure_kind,
    grpc_code,
    refusal_metadata,
    relayable,
    reserved,
    upstream_message,
)
from gateway.dataplane.grpc.stream import StreamRelay
from gateway.dataplane.grpc.tensors import GrpcInferBody, infer_inputs
from gateway.dataplane.grpc.wire import (
    Head,
    WireError,
    readdress,
    readdress_nested,
    split_head,
    string_field,
)
from gateway.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnknownRoute,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from gateway.dataplane.plane import DataPlane
    from gateway.dataplane.shadow.call import ShadowCall
    from gateway.dataplane.snapshot import Variant

PREFIX = f"/{SERVICE}/"
KSERVE = "kserve-v2"
_NOT_FORWARDED = frozenset({"user-agent", "te", "content-type", "x-request-id"})
_KEY_METADATA = frozenset({"authorization", "x-api-key"})  # dropped when keys are on
# Upstream channels: the gateway retries and ejects by policy, so gRPC's own retries are
# off, and a backend that restarts is dialled again within a second, not after gRPC's
# default backoff of up to two minutes.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
SWEEP_INTERVAL = 30.0  # seconds between closing channels of endpoints no longer served

log = logging.getLogger("switchyard.grpc")

Handler = Callable[[bytes, Any], Awaitable[bytes]]


class GrpcFront:
    """The gateway's gRPC listener and its upstream channels (one per backend target)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._server: Any = None
        self._channels: dict[str, Any] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._metadata: dict[bytes, tuple[tuple[str, str], ...]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._live = _bool_message(True)
        self._server_metadata = b"".join(
            (
                string_field(1, "switchyard"),
                string_field(2, __version__),
                string_field(3, "binary_tensor_data"),
            )
        )

    # Serving ------------------------------------------------------------------------

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Start serving gRPC on host:port (0 picks a port); returns the bound port.

        SO_REUSEPORT is off unless asked for (workers share the port): gRPC turns it on
        by default, which would let two gateways bind one port without an error.
        """
        handlers: dict[str, Any] = {
            "ServerLive": _unary(self._server_live),
            "ServerReady": _unary(self._server_ready),
            "ServerMetadata": _unary(self._server_metadata_call),
            "ModelReady": _unary(self._proxy_handler("ModelReady")),
            "ModelMetadata": _unary(self._proxy_handler("ModelMetadata")),
            "ModelConfig": _unary(self._proxy_handler("ModelConfig")),
            "ModelInfer": _unary(self._proxy_handler("ModelInfer")),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self._stream_infer),
        }
        limit = self.plane.settings.limits.max_body_bytes
        server = grpc.aio.server(
            handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
            options=[
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
            ],
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound: int = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        self._server = server
        self._sweeper = self.plane.loop.call_later(SWEEP_INTERVAL, self._sweep)
        return bound

    async def drain(self, timeout: float) -> None:
        """Stop accepting calls, let those in flight finish up to `timeout`, then close."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            await self._server.stop(timeout)
        for channel in list(self._channels.values()):
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # Server-level calls, answered here -------------------------------------------

    async def _server_live(self, data: bytes, context: Any) -> bytes:
        return self._live

    async def _server_ready(self, data: bytes, context: Any) -> bytes:
        # As /v2/health/ready: not draining, and serving at least one route.
        plane = self.plane
        return _bool_message(not plane.draining and bool(plane.ref.current.routes))

    async def _server_metadata_call(self, data: bytes, context: Any) -> bytes:
        return self._server_metadata

    # Model calls, proxied -------------------------------------------------------------

    async def _stream_infer(
        self, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        # An async generator function: grpc.aio tells stream handlers apart by that.
        try:
            # Closed explicitly: when the client leaves, the relay's cleanup (backend
            # call cancelled, metrics) runs now, not whenever the generator is collected.
            async with contextlib.aclosing(StreamRelay(self, requests, context).run()) as relay:
                async for reply in relay:
                    yield reply
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("gRPC ModelStreamInfer failed inside the gateway")
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal gateway error; see the gateway log"
            )
            raise

    def _proxy_handler(self, method: str) -> Handler:
        async def handle(data: bytes, context: Any) -> bytes:
            try:
                return await self.proxy_unary(method, data, context)
            except grpc.aio.AbortError:
                raise  # a status the gateway chose, on its way to the client
            except Exception:
                # A bug: logged here, while the client learns no internals (grpc's own
                # handler would send the exception's text).
                log.exception("gRPC %s failed inside the gateway", method)
                await context.abort(
                    grpc.StatusCode.INTERNAL, "internal gateway error; see the gateway log"
                )
                raise

        return handle

    def route_call(
        self, method: str, data: bytes, context: Any
    ) -> tuple[Head, Decision, tuple[tuple[str, str | bytes], ...], Who]:
        """Read the model name, decide the variant and check the route serves gRPC.

        Returns the request's head, the decision, the metadata to forward and, for a
        route with flow control, the call's priority and tenant; raises `GatewayError`
        for what the client must fix or the gateway cannot serve.
        """
        try:
            head = split_head(data)
        except WireError as exc:
            message = f"{method}: the request is not a valid {method}Request: {exc}"
            raise BadRequest(message) from None
        if not head.name:
            field = "model_name" if method in ("ModelInfer", "ModelStreamInfer") else "name"
            raise BadRequest(f"{method}: `{field}` is required: the model (route) to call")
        plane = self.plane
        fields: dict[bytes, bytes] = {}
        forward: list[tuple[str, str | bytes]] = []
        for key, value in context.invocation_metadata() or ():
            raw = value if isinstance(value, bytes) else value.encode()
            fields[key.encode()] = raw
            if key not in _NOT_FORWARDED and not reserved(key):
                forward.append((key, value))
        key = None
        if plane.auth is not None:
            # The same keys and per-key limits as HTTP (UNAUTHENTICATED for a missing
            # or unknown key, RESOURCE_EXHAUSTED over the limit); never forwarded.
            key = plane.auth.admit(fields, time.monotonic())
            forward = [(k, v) for k, v in forward if k not in _KEY_METADATA]
        rid = fields.get(b"x-request-id", b"")
        forward.append(("x-request-id", rid.decode() if _good_id(rid) else _new_id(plane)))
        try:
            decision = decide(
                plane.ref.current, RequestHead(head.name, (), None, fields), plane.rng
            )
        except UnknownRoute:
            shown = head.name if len(head.name) <= 128 else head.name[:128] + "..."
            raise NotFound(
                f"model '{shown}' is not served by any route of this gateway (the model "
                "name is the route name of a kserve-v2 policy)"
            ) from None
        route = decision.route
        if route.protocol != KSERVE:
            raise BadRequest(
                f"route '{route.name}' speaks {route.protocol}, not KServe v2; the gRPC "
                "front serves kserve-v2 routes",
                route=route.name,
            )
        if route.max_body_bytes is not None and len(data) > route.max_body_bytes:
            raise PayloadTooLarge(
                f"request of {len(data)} bytes exceeds route '{route.name}' limit of "
                f"{route.max_body_bytes} bytes",
                route=route.name,
            )
        if plane.draining:
            raise Unavailable("the gateway is shutting down; retry on another replica")
        who = NOBODY
        gate = decision.variant.flow  # every variant of a route has the route's flow block
        if gate is not None:
            if key is None:
                who = gate.identify(fields, -1, "")
            else:
                who = gate.identify(fields, key.priority, key.tenant or key.name)
        return head, decision, tuple(forward), who

    async def proxy_unary(self, method: str, data: bytes, context: Any) -> bytes:
        """Route one unary model call, retrying before any response, and relay the reply."""
        received = time.perf_counter()
        try:
            head, decision, forward, who = self.route_call(method, data, context)
            check = decision.variant.signature
            if check is not None and method == "ModelInfer":
                # The version it was routed to: INVALID_ARGUMENT naming the input.
                try:
                    inputs = infer_inputs(data)
                except ValueError as exc:
                    raise BadRequest(f"ModelInfer: {exc}") from None
                check.check_v2(inputs)
            call = GrpcCall(decision, received, self.plane.turns)
            plane = self.plane
            if plane.tracer is not None or plane.access_log is not None:
                forward = call.observe(plane.tracer, plane.access_log, method, forward)
            variant, idx = call.first()
            if variant.flow is not None:  # may wait in the pool's queue, or be refused
                idx = await call.admitted(variant, idx, who)
        except GatewayError as err:
            self.plane.metrics.refused(err.code, err.status, err.route)
            await context.abort(grpc_code(err), err.message, refusal_metadata(err))
            raise AssertionError("unreachable: abort raises") from None
        feedback: FeedbackIdMetadata | None = None
        if method == "ModelInfer" and decision.route.name in self.plane.exposures.routes:
            # Signed before the shadow copies go out, so they carry the same id.
            feedback = FeedbackIdMetadata(self.plane, decision.route.name, context)
            forward = feedback.sign(variant, forward, call)
        shadows: tuple[ShadowCall, ...] = ()
        if method == "ModelInfer":
            # Decoded only if the tap samples it, off the request path (grpctensors).
            self.plane.tap.offer(decision, GrpcInferBody(data))
            if decision.route.shadows:  # the shadow feature's whole cost on other routes
                shadows = self.plane.shadow.grpc_calls(decision, data, forward)
                if call.trace is not None:
                    for copy in shadows:
                        copy.traced(call.trace, "POST")
        try:
            return await self._attempts(
                method, head, decision, forward, call, variant, idx, context, shadows, feedback
            )
        finally:
            if shadows:
                # However the call ended, each copy learns it (a no-op for the copies
                # whose primary result was already reported below).
                self._primary_failed(shadows, "gateway error internal_error")

    async def _attempts(
        self,
        method: str,
        head: Head,
        decision: Decision,
        forward: tuple[tuple[str, str | bytes], ...],
        call: GrpcCall,
        variant: Variant,
        idx: int,
        context: Any,
        shadows: tuple[ShadowCall, ...],
        feedback: FeedbackIdMetadata | None = None,
    ) -> bytes:
        """The call's attempts until one answers or none is left; relays the reply."""
        route = decision.route
        timeouts = route.timeouts
        total_deadline = time.monotonic() + timeouts.total
        signed: tuple[tuple[str, str], ...] = ()
        while True:
            if feedback is not None:
                if variant is not feedback.variant:  # a fallback variant takes over
                    forward = feedback.sign(variant, forward, call)
                signed = feedback.metadata
            endpoint = call.begin(variant, idx)
            payload = upstream_message(head, variant, route.name)
            limit = min(timeouts.first_byte, total_deadline - time.monotonic())
            left = context.time_remaining()
            ours = left is None or left > limit
            upstream = self.stub(endpoint.grpc_target, method)(
                payload, timeout=limit if ours else left, metadata=call.attempt_metadata(forward)
            )
            if shadows and call.attempts == 1:
                # After the primary: its call is scheduled already, so the loop starts
                # it before this callback sends the copies.
                self.plane.loop.call_soon(self.plane.shadow.send_all, shadows)
            try:
                reply = await upstream
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                kind = failure_kind(code, details, ours)
                call.attempt_traced(code, details)
                call.end_attempt(ok=HTTP_STATUS.get(code, 500) < 500 and kind != "reset")
                client_left = context.time_remaining()
                nxt = call.next_target(kind) if client_left is None or client_left > 0 else None
                if nxt is not None:
                    variant, idx = nxt
                    continue
                await self._fail(call, context, exc, kind, limit, shadows, signed)
                raise AssertionError("unreachable: abort raises") from None
            except asyncio.CancelledError:
                call.attempt_traced(grpc.StatusCode.CANCELLED)
                call.end_attempt(ok=True)  # the client left; the backend did nothing wrong
                call.finish(499)
                self._primary_failed(shadows, "client closed the connection")
                raise
            call.attempt_traced(grpc.StatusCode.OK)
            try:
                renamed = rename_reply(method, reply, route.name)
            except WireError as exc:
                call.end_attempt(ok=False)
                bad = UpstreamProtocolError(
                    f"backend {endpoint.backend} sent an invalid {method}Response: {exc}"
                )
                call.failed(bad)
                self._primary_failed(shadows, f"gateway error {bad.code}")
                await context.abort(grpc_code(bad), bad.message, self.variant_metadata(call))
                raise AssertionError("unreachable: abort raises") from None
            call.end_attempt(ok=True)
            call.finish(200)
            self._primary_answered(shadows, call, 200, reply)
            # The backend's metadata is relayed like its HTTP headers would be; initial
            # metadata costs a write of its own, so only when there is some (Triton
            # sends none).
            initial = relayable(await upstream.initial_metadata())
            if initial:
                await context.send_initial_metadata(initial)
            trailing = relayable(await upstream.trailing_metadata())
            context.set_trailing_metadata((*trailing, *self.variant_metadata(call), *signed))
            return renamed

    async def _fail(
        self,
        call: GrpcCall,
        context: Any,
        exc: Any,
        kind: str,
        limit: float,
        shadows: tuple[ShadowCall, ...] = (),
        signed: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """End the call with the last attempt's failure: the backend's own status passes
        through; failures to reach or hear from it are the gateway's to explain."""
        md = (*self.variant_metadata(call), *signed)
        backend = call.variant.endpoints[call.idx]
        details = exc.details() or ""
        err: UpstreamError | None = None
        if kind == "connect-error":
            err = UpstreamConnectError(
                f"route '{call.decision.route.name}': backend {backend.backend} is not "
                f"reachable over gRPC at {backend.grpc_target} ({details})"
            )
        elif kind == "reset":
            err = UpstreamProtocolError(
                f"backend {backend.backend} closed the gRPC call before answering ({details})"
            )
        elif kind == "timeout":
            err = UpstreamTimeout(
                f"backend {backend.backend}: no response within {limit:.3g}s (the route's "
                "first_byte/total timeout)"
            )
        if err is not None:
            call.failed(err)
            self._primary_failed(shadows, f"gateway error {err.code}")
            await context.abort(grpc_code(err), err.message, md)
            return
        status = HTTP_STATUS.get(exc.code(), 500)
        call.finish(status)
        # The backend answered with an error status: compared by status, as over HTTP.
        self._primary_answered(shadows, call, status, b"")
        initial = relayable(exc.initial_metadata())
        if initial:
            await context.send_initial_metadata(initial)
        await context.abort(exc.code(), details, (*relayable(exc.trailing_metadata()), *md))

    # Shadow copies ------------------------------------------------------------------

    def _primary_answered(
        self, shadows: tuple[ShadowCall, ...], call: GrpcCall, status: int, reply: bytes
    ) -> None:
        """Hand the primary's answer to its copies (kept only up to the shadow limit)."""
        if not shadows:
            return
        mirror = self.plane.shadow
        body = reply if len(reply) <= mirror.limit else None
        variant = call.variant
        result = (status, body, time.perf_counter() - call.sent_at, variant.name, variant.version)
        for copy in shadows:
            mirror.primary_done(copy, result)

    def _primary_failed(self, shadows: tuple[ShadowCall, ...], why: str) -> None:
        mirror = self.plane.shadow
        for copy in shadows:
            mirror.primary_done(copy, why)

    # Upstream channels --------------------------------------------------------------

    def stub(self, target: str, method: str) -> Any:
        """The raw-bytes callable of `method` on the channel to `target` (made once)."""
        key = (target, method)
        found = self._stubs.get(key)
        if found is None:
            channel = self._channel(target)
            path = PREFIX + method
            if method == "ModelStreamInfer":
                found = channel.stream_stream(path)
            else:
                found = channel.unary_unary(path)
            self._stubs[key] = found
        return found

    def _channel(self, target: str) -> Any:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.aio.insecure_channel(
                target, options=CHANNEL_OPTIONS
            )
        return channel

    def _sweep(self) -> None:
        """Close channels to backends that no route serves any more (pods gone)."""
        live = {
            endpoint.grpc_target
            for route in self.plane.ref.current.routes.values()
            for variant in route.variants
            for endpoint in variant.endpoints
        }
        for target in [t for t in self._channels if t not in live]:
            channel = self._channels.pop(target)
            for key in [k for k in self._stubs if k[0] == target]:
                del self._stubs[key]
            # Calls still on it (an old snapshot's) get the drain timeout to finish.
            task = self.plane.loop.create_task(channel.close(self.plane.settings.drain_timeout))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._sweeper = self.plane.loop.call_later(SWEEP_INTERVAL, self._sweep)

    # Shared with the stream relay ----------------------------------------------------

    def variant_metadata(self, call: GrpcCall) -> tuple[tuple[str, str], ...]:
        """x-switchyard-* entries naming who served `call` (as the HTTP headers do)."""
        if not call.attempts:
            return (("x-switchyard-route", call.decision.route.name),)
        lines = call.variant.header_lines[call.idx]
        found = self._metadata.get(lines)
        if found is None:
            pairs: list[tuple[str, str]] = []
            for line in lines.decode("latin-1").split("\r\n"):
                name, sep, value = line.partition(": ")
                if sep:
                    pairs.append((name, value))
            found = self._metadata[lines] = tuple(pairs)
        return found


class FeedbackIdMetadata:
    """The signed feedback id of a ModelInfer call on a route that takes feedback.

    The reply's trailing metadata carries `x-switchyard-feedback-id` (gRPC clients see
    no x-request-id: this is the id to send to `POST /v1/feedback`). When the client sent
    no usable x-request-id, the one forwarded upstream (and logged) is the signed id too.
    Signed for the variant of the first attempt, again only if a fallback takes over.
    """

    def __init__(self, plane: DataPlane, route: str, context: Any) -> None:
        self.plane = plane
        self.route = route
        self.minted = not any(
            key == "x-request-id"
            and _good_id(value if isinstance(value, bytes) else value.encode())
            for key, value in context.invocation_metadata() or ()
        )
        self.variant: Variant | None = None
        self.metadata: tuple[tuple[str, str], ...] = ()

    def sign(
        self, variant: Variant, forward: tuple[tuple[str, str | bytes], ...], call: GrpcCall
    ) -> tuple[tuple[str, str | bytes], ...]:
        """The metadata to forward for `variant` serving the call (its id minted)."""
        self.variant = variant
        fid = self.plane.feedback_ids.mint(self.route, variant.name, variant.version).decode()
        self.metadata = (("x-switchyard-feedback-id", fid),) if fid else ()
        if not fid or not self.minted:
            return forward
        call.request_id = fid
        return tuple(("x-request-id", fid) if k == "x-request-id" else (k, v) for k, v in forward)


def rename_reply(method: str, reply: bytes, route: str) -> bytes:
    """A backend reply that names the route, not the backend's model."""
    if method in ("ModelInfer", "ModelMetadata"):
        return readdress(reply, route)
    if method == "ModelConfig":
        return readdress_nested(reply, 1, route)
    return reply


def _unary(handler: Handler) -> Any:
    # No (de)serializers: requests and replies are the raw message bytes.
    return grpc.unary_unary_rpc_method_handler(handler)


def _bool_message(value: bool) -> bytes:
    """ServerLiveResponse / ServerReadyResponse / ModelReadyResponse: one bool, field 1."""
    return b"\x08\x01" if value else b""


def _good_id(rid: bytes) -> bool:
    """A client's request id worth passing on (else the gateway makes one)."""
    return 0 < len(rid) <= 128 and rid.isascii() and rid.decode().isprintable()


def _new_id(plane: DataPlane) -> str:
    return plane.new_request_id().decode()
