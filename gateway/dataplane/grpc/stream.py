"""ModelStreamInfer through the gateway: one client stream relayed to one backend stream.

The first request names the route, and `decide` picks the variant once for the whole
stream (sticky keys and overrides come from the stream's metadata); every later
request must name the same route, since one backend stream carries them all. Requests
are re-addressed to the backend's model and relayed as they come; replies (several per
request for decoupled models) are renamed back to the route.

Retries and fallbacks happen only before the first reply reaches the client, as on
HTTP: until then the gateway keeps the requests it relayed (at most `MAX_REPLAY`) and
replays them on the next backend. After the first reply the backend is committed: a
later failure ends the client's stream with that failure's status.

Time limits: the route's `first_byte` bounds the wait for the first reply, its `total`
the whole stream (as a gRPC deadline; raise it for long-lived streams). Variant
metadata (x-switchyard-*) goes out as initial metadata with the first reply, so a
client sees who serves the stream while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from gateway.dataplane.grpc.call import (
    HTTP_STATUS,
    GrpcCall,
    Who,
    failure_kind,
    grpc_code,
    refusal_metadata,
    relayable,
    upstream_message,
)
from gateway.dataplane.grpc.wire import Head, WireError, readdress_nested, split_head
from gateway.errors import (
    BadRequest,
    GatewayError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from gateway.dataplane.decide import Decision
    from gateway.dataplane.plane import DataPlane
    from gateway.dataplane.snapshot import Variant

METHOD = "ModelStreamInfer"
MAX_REPLAY = 64  # requests kept for a retry until the first reply; more: no retry
_RESPONSE_INFER = 2  # ModelStreamInferResponse.infer_response


class StreamHost(Protocol):
    """What a stream relay needs of the gRPC front that runs it (GrpcFront), named here
    so that the relay does not import the front that imports it."""

    plane: DataPlane

    def route_call(
        self, method: str, data: bytes, context: Any
    ) -> tuple[Head, Decision, tuple[tuple[str, str | bytes], ...], Who]: ...

    def stub(self, target: str, method: str) -> Any: ...

    def variant_metadata(self, call: GrpcCall) -> tuple[tuple[str, str], ...]: ...


class StreamRelay:
    """State of one client stream: its requests, the current attempt, the outcome."""

    def __init__(self, front: StreamHost, requests: AsyncIterator[bytes], context: Any) -> None:
        self.front = front
        self.requests = requests
        self.context = context
        self.pending: deque[Head] = deque()  # requests not yet dropped from the replay
        self.base = 0  # index (in the client's stream) of pending[0]
        self.client_done = False
        self.replayable = True
        self.failure: GatewayError | None = None
        self.more = asyncio.Event()
        self.attempt = 0
        self.upstream: Any = None
        self.route_name = ""
        self.model_name = ""

    async def run(self) -> AsyncGenerator[bytes, None]:
        """The handler of one ModelStreamInfer call: yields the client's replies."""
        received = time.perf_counter()
        first = await anext(aiter(self.requests), None)
        if first is None:
            return  # the client closed without a request: nothing to route
        front = self.front
        try:
            head, decision, forward, who = front.route_call(METHOD, first, self.context)
            call = GrpcCall(decision, received, front.plane.turns)
            plane = front.plane
            if plane.tracer is not None or plane.access_log is not None:
                # One span for the whole stream, one child per backend stream (attempt).
                forward = call.observe(plane.tracer, plane.access_log, METHOD, forward)
            variant, idx = call.first()
            if variant.flow is not None:  # admitted once, before its first reply
                idx = await call.admitted(variant, idx, who)
        except GatewayError as err:
            front.plane.metrics.refused(err.code, err.status, err.route)
            await self.context.abort(grpc_code(err), err.message, refusal_metadata(err))
            return
        self.route_name = decision.route.name
        self.model_name = head.name
        self.pending.append(head)
        reader = asyncio.get_running_loop().create_task(self._read())
        reader.add_done_callback(_retrieve)
        try:
            async with contextlib.aclosing(self._relay(call, variant, idx, forward)) as replies:
                async for reply in replies:
                    yield reply
        finally:
            reader.cancel()
            self.attempt = -1
            self.more.set()  # every attempt's feed wakes, sees it is over, and ends
            if self.upstream is not None:
                self.upstream.cancel()
            if call.endpoint is not None:  # the client left mid-stream
                call.end_attempt(ok=True)
                call.finish(499)

    async def _relay(
        self,
        call: GrpcCall,
        variant: Variant,
        idx: int,
        forward: tuple[tuple[str, str | bytes], ...],
    ) -> AsyncGenerator[bytes, None]:
        context = self.context
        route = call.decision.route
        timeouts = route.timeouts
        deadline = time.monotonic() + timeouts.total
        committed = False
        while True:
            endpoint = call.begin(variant, idx)
            self.attempt += 1
            self.more.set()  # a failed attempt's feed may wait for requests: let it end
            left = context.time_remaining()
            limit = deadline - time.monotonic()
            ours = left is None or left > limit
            upstream = self.upstream = self.front.stub(endpoint.grpc_target, METHOD)(
                self._feed(variant, self.attempt),
                metadata=call.attempt_metadata(forward),
                timeout=limit if ours else left,
            )
            replies = aiter(upstream)
            first_limit = min(timeouts.first_byte, limit)
            kind = ""
            code: Any = None  # the attempt's gRPC status when it failed
            details = ""
            try:
                async with asyncio.timeout(first_limit):
                    reply = await anext(replies)
                committed = True
                self.replayable = False
                initial = relayable(await upstream.initial_metadata())
                await context.send_initial_metadata((*initial, *self.front.variant_metadata(call)))
                yield readdress_nested(reply, _RESPONSE_INFER, self.route_name)
                async for reply in replies:
                    yield readdress_nested(reply, _RESPONSE_INFER, self.route_name)
            except StopAsyncIteration:
                committed = True  # the backend ended the stream without a reply
            except TimeoutError:
                upstream.cancel()
                kind = "timeout"
                code, details = grpc.StatusCode.DEADLINE_EXCEEDED, ""
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                kind = failure_kind(code, details, ours)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                call.attempt_traced(grpc.StatusCode.CANCELLED)
                if self.failure is None or (task is not None and task.cancelling()):
                    raise  # the client left (the finally of `run` counts it)
                # Our reader cancelled the backend call: the client sent a bad request.
                call.end_attempt(ok=True)
                call.failed(self.failure)
                await context.abort(grpc_code(self.failure), self.failure.message)
                return
            except WireError as exc:
                upstream.cancel()
                kind, code = "reset", grpc.StatusCode.UNAVAILABLE
                details = f"backend {endpoint.backend} sent an invalid reply: {exc}"
            call.attempt_traced(grpc.StatusCode.OK if code is None else code, details)
            if not kind:
                call.end_attempt(ok=True)
                call.finish(200)
                trailing = relayable(await upstream.trailing_metadata())
                context.set_trailing_metadata((*trailing, *self.front.variant_metadata(call)))
                return
            call.end_attempt(ok=HTTP_STATUS.get(code, 500) < 500 and kind != "reset")
            nxt = None
            if not committed and self.replayable and self.failure is None:
                nxt = call.next_target(kind)
            if nxt is not None:
                variant, idx = nxt
                continue
            await self._fail(call, kind, code, details, first_limit if not committed else limit)
            return

    async def _fail(self, call: GrpcCall, kind: str, code: Any, details: str, limit: float) -> None:
        md = self.front.variant_metadata(call)
        backend = call.variant.endpoints[call.idx]
        err: UpstreamError | None = None
        if self.failure is not None:
            call.failed(self.failure)
            await self.context.abort(grpc_code(self.failure), self.failure.message, md)
            return
        if kind == "connect-error":
            err = UpstreamConnectError(
                f"route '{self.route_name}': backend {backend.backend} is not reachable over "
                f"gRPC at {backend.grpc_target} ({details})"
            )
        elif kind == "reset":
            err = UpstreamProtocolError(
                f"backend {backend.backend} ended the gRPC stream abnormally ({details})"
            )
        elif kind == "timeout":
            err = UpstreamTimeout(
                f"backend {backend.backend}: no reply within {limit:.3g}s (the route's "
                "first_byte/total timeout)"
            )
        if err is not None:
            call.failed(err)
            await self.context.abort(grpc_code(err), err.message, md)
            return
        call.finish(HTTP_STATUS.get(code, 500))
        await self.context.abort(code, details, md)

    async def _read(self) -> None:
        """Take the client's requests as they come; a bad one ends the stream."""
        index = 2  # the first request was read by `run`
        async for data in self.requests:
            try:
                head = split_head(data)
            except WireError as exc:
                self._reject(f"{METHOD}: request {index} is not a valid ModelInferRequest: {exc}")
                return
            if head.name != self.model_name:
                self._reject(
                    f"{METHOD}: request {index} names model '{head.name[:128]}', but this "
                    f"stream serves '{self.model_name}': open one stream per model"
                )
                return
            self.pending.append(head)
            if self.replayable and len(self.pending) > MAX_REPLAY:
                self.replayable = False  # too much to hold for a retry: no retry
            self.more.set()
            index += 1
        self.client_done = True
        self.more.set()

    def _reject(self, message: str) -> None:
        self.failure = BadRequest(message, route=self.route_name)
        if self.upstream is not None:
            self.upstream.cancel()

    async def _feed(self, variant: Variant, attempt: int) -> AsyncIterator[bytes]:
        """The requests of one attempt: a replay of those kept, then new ones as they come."""
        sent = 0  # requests of the client's stream this attempt has relayed
        route = self.route_name
        while attempt == self.attempt and self.failure is None:
            if not self.replayable:
                while self.base < sent and self.pending:
                    self.pending.popleft()  # relayed, and no retry will need it again
                    self.base += 1
            at = sent - self.base
            if at < len(self.pending):
                head = self.pending[at]
                sent += 1
                yield upstream_message(head, variant, route)
                continue
            if self.client_done:
                return
            self.more.clear()
            await self.more.wait()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark the reader's outcome as seen: a client that vanished mid-read is not news."""
    if not task.cancelled():
        task.exception()
