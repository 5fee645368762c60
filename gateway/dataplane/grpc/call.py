"""One proxied gRPC call's attempts: pick, retry, eject and count, as HTTP exchanges do.

The gRPC front runs each call as a coroutine (grpc.aio hands it one), so this is the
bookkeeping half of `Exchange` without the HTTP parsing: the same endpoint choice
(`pick.first_target`, then `pick.retry_target`: one routine for both fronts), the same
retry policy and budget, the same passive outlier
ejection and the same metric series. gRPC statuses are read as the HTTP statuses
they correspond to, so a policy's `retries.on: [503]` and the status-class metrics
mean the same thing on both fronts.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from types import MappingProxyType
from typing import Any

import grpc

from gateway.dataplane.decide import Decision
from gateway.dataplane.flow import Waiter
from gateway.dataplane.grpc.wire import Head, with_head
from gateway.dataplane.pick import Turns, attempt_failed, first_target, retry_target, room
from gateway.dataplane.snapshot import Endpoint, Variant
from gateway.errors import GatewayError, NoHealthyUpstream, Overloaded
from gateway.observability.flow_metrics import ADMITTED
from gateway.observability.metrics import RequestSeries
from gateway.observability.tracing.accesslog import AccessLog
from gateway.observability.tracing.context import TRACEPARENT, parse_traceparent
from gateway.observability.tracing.record import RequestRecord
from gateway.observability.tracing.tracer import RequestTrace, Tracer

SERVICE = "inference.GRPCInferenceService"

# Metadata a proxy never relays: transport-level keys gRPC sets itself, and the
# gateway's own namespace (a client or backend must not forge x-switchyard-*).
_RESERVED = ("grpc-", ":", "x-switchyard-")

# gRPC status -> the HTTP status it stands for (grpc's own HTTP mapping, inverted):
# status classes in metrics, retry conditions, and whether the backend failed.
HTTP_STATUS = MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DATA_LOSS: 500,
        grpc.StatusCode.UNAUTHENTICATED: 401,
    }
)
# The gateway's own errors (by HTTP status) -> the gRPC status a client gets.
_GRPC_CODE = MappingProxyType(
    {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        401: grpc.StatusCode.UNAUTHENTICATED,
        404: grpc.StatusCode.NOT_FOUND,
        405: grpc.StatusCode.UNIMPLEMENTED,
        408: grpc.StatusCode.DEADLINE_EXCEEDED,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        431: grpc.StatusCode.RESOURCE_EXHAUSTED,
        502: grpc.StatusCode.UNAVAILABLE,
        503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def grpc_code(err: GatewayError) -> grpc.StatusCode:
    """The gRPC status of an error the gateway itself answers."""
    return _GRPC_CODE.get(err.status, grpc.StatusCode.INTERNAL)


def refusal_metadata(err: GatewayError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata of an error: a flow queue's refusal says when to retry."""
    if isinstance(err, Overloaded):
        return (("retry-after", str(err.retry_after)),)
    return ()


# A call's (priority, tenant) on a route with flow control (`GrpcFront.route_call`).
Who = tuple[int, str]
NOBODY: Who = (0, "")


def failure_kind(code: grpc.StatusCode, details: str, ours: bool) -> str:
    """The retry condition a failed upstream call meets, as the HTTP path names them.

    UNAVAILABLE is what gRPC reports both for a backend it could not reach and for a
    backend that answered "unavailable"; its message tells them apart. `ours`: the
    deadline that expired was the route's, not the client's.
    """
    if code == grpc.StatusCode.UNAVAILABLE:
        text = details.lower()
        if "connect" in text:
            return "connect-error"
        if "socket closed" in text or "reset" in text or "goaway" in text:
            return "reset"
        return "503"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and ours:
        return "timeout"
    return str(HTTP_STATUS.get(code, 500))


def grpc_endpoints(variant: Variant) -> bool:
    """Whether the variant's pool can be reached over gRPC (its policy set grpc_port)."""
    return bool(variant.endpoints) and bool(variant.endpoints[0].grpc_target)


class GrpcCall:
    """Attempt bookkeeping for one client call (unary or one stream)."""

    __slots__ = (
        "access_log",
        "attempts",
        "caller",
        "decision",
        "endpoint",
        "held",
        "idx",
        "method",
        "received_at",
        "request_id",
        "sent_at",
        "series",
        "trace",
        "tried",
        "turns",
        "variant",
    )

    def __init__(self, decision: Decision, received_at: float, turns: Turns) -> None:
        self.decision = decision
        self.received_at = received_at
        self.turns = turns  # the data plane's rotating start for equal endpoints
        self.variant: Variant = decision.variant
        self.idx = 0
        self.attempts = 0
        self.tried: tuple[tuple[int, int], ...] = ()
        self.endpoint: Endpoint | None = None
        self.series: RequestSeries | None = None
        self.sent_at = 0.0
        # Tracing and the access log (`observe`); None while both are off.
        self.trace: RequestTrace | None = None
        self.access_log: AccessLog | None = None
        self.method = ""
        self.request_id = ""
        self.caller = b""  # the incoming traceparent, for an access line not traced here
        # A flow queue released the call onto an endpoint: its slot is counted already,
        # and the first attempt (`begin`) takes it over.
        self.held = False

    def observe(
        self,
        tracer: Tracer | None,
        access_log: AccessLog | None,
        method: str,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> tuple[tuple[str, str | bytes], ...]:
        """Trace the call if sampled and log it if the access log is on; returns the
        metadata to forward (a traced call's attempts send their own traceparent)."""
        fields: dict[bytes, bytes] = {}
        for key, value in metadata:
            if key in ("traceparent", "tracestate", "x-request-id") and isinstance(value, str):
                fields[key.encode()] = value.encode()
        self.access_log = access_log
        self.method = method
        self.request_id = fields.get(b"x-request-id", b"").decode()
        self.caller = fields.get(TRACEPARENT, b"")
        if tracer is None:
            return metadata
        self.trace = tracer.start(fields, self.received_at)
        if self.trace is None:
            return metadata
        return tuple(kv for kv in metadata if kv[0] != "traceparent")

    def first(self) -> tuple[Variant, int]:
        """Where the first attempt goes: the decided variant, else its fallbacks."""
        target = first_target(self.decision, time.monotonic(), self.turns, grpc_endpoints)
        if target is not None:
            return target
        route = self.decision.route
        variant = self.decision.variant
        if not any(grpc_endpoints(v) for v in self.decision.order):
            raise NoHealthyUpstream(
                f"route '{route.name}': variant '{variant.name}' and its fallbacks have no "
                "gRPC backends (set grpc_port on the variant to reach its pool over gRPC)",
                route=route.name,
            )
        raise NoHealthyUpstream(
            f"route '{route.name}': every endpoint of variant '{variant.name}' and its "
            "fallbacks is ejected or unavailable",
            route=route.name,
        )

    def begin(self, variant: Variant, idx: int) -> Endpoint:
        """Start an attempt on endpoint `idx` of `variant`."""
        self.attempts += 1
        self.variant = variant
        self.idx = idx
        self.tried += ((variant.index, idx),)
        endpoint = self.endpoint = variant.endpoints[idx]
        self.series = variant.series[idx]
        if self.held:
            self.held = False
        else:
            endpoint.state.in_flight += 1
        self.sent_at = time.perf_counter()
        return endpoint

    def attempt_metadata(
        self, forward: tuple[tuple[str, str | bytes], ...]
    ) -> tuple[tuple[str, str | bytes], ...]:
        """What the attempt `begin` started sends upstream: `forward`, plus, on a traced
        call, the traceparent of the attempt's CLIENT span (opened here)."""
        trace = self.trace
        if trace is None:
            return forward
        variant = self.variant
        endpoint = variant.endpoints[self.idx]
        parent = trace.rpc_attempt(
            SERVICE,
            self.method,
            variant.name,
            variant.version,
            endpoint.backend,
            endpoint.grpc_target,
        )
        return (*forward, ("traceparent", parent))

    def attempt_traced(self, code: grpc.StatusCode, details: str = "") -> None:
        """Close a traced call's attempt span with the attempt's gRPC status."""
        if self.trace is not None:
            self.trace.rpc_attempt_ended(code.value[0], code.name, details)

    async def admitted(self, variant: Variant, idx: int, who: Who) -> int:
        """Flow control (the route has a `flow` block): the endpoint of `variant` the
        first attempt goes to, at once when the pool has room, else once the pool's
        queue releases the call; raises the queue's refusal (`Overloaded`). A client
        that leaves while waiting (the handler is cancelled) leaves the queue."""
        gate = variant.flow
        if gate is None:
            return idx
        level, tenant = who
        queue = gate.queue
        now = time.monotonic()
        if queue.waiting == 0 or level > queue.highest():
            found = room(gate, variant, level, now, idx)
            if found >= 0:
                queue.series.count(tenant, level, ADMITTED)
                return found
        loop = asyncio.get_running_loop()
        released: asyncio.Future[int] = loop.create_future()

        def has_room(at: float) -> int:
            return room(gate, variant, level, at, -1)

        def release(i: int) -> None:
            # Counted now, so the queue's next release sees the slot taken.
            variant.endpoints[i].state.in_flight += 1
            self.held = True
            released.set_result(i)

        def refuse(err: GatewayError) -> None:
            released.set_exception(err)

        waiter = Waiter(level, tenant, gate.weight(tenant), now, has_room, release, refuse)
        queue.offer(waiter, gate.max_queue)
        queue.pump(now)
        timer = loop.call_later(gate.timeout, lambda: queue.expire(waiter, time.monotonic()))
        try:
            return await released
        except asyncio.CancelledError:
            queue.leave(waiter)
            if self.held:  # released, then cancelled before the attempt began
                self.held = False
                variant.endpoints[released.result()].state.in_flight -= 1
                queue.schedule(loop)
            raise
        finally:
            timer.cancel()

    def end_attempt(self, ok: bool) -> None:
        """The attempt is over; a failure counts towards the endpoint's ejection."""
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is None:
            return
        state = endpoint.state
        state.in_flight -= 1
        gate = self.variant.flow
        if gate is not None and gate.queue.waiting > 0:  # a slot freed in a saturated pool
            gate.queue.schedule(asyncio.get_running_loop())
        if ok:
            state.consecutive_failures = 0
            return
        attempt_failed(self.decision, self.variant, endpoint, self.series, time.monotonic())

    def next_target(self, kind: str) -> tuple[Variant, int] | None:
        """Where to retry after a failure of `kind`, or None (spends retry budget)."""
        return retry_target(
            self.decision,
            self.attempts,
            self.tried,
            kind,
            time.monotonic(),
            self.turns,
            grpc_endpoints,
        )

    def finish(self, status: int) -> None:
        """Count the call's outcome (`status` as HTTP: 200, 4xx, 5xx; 499 = client left)."""
        series = self.series
        if series is None:
            return
        if status == 499:  # the client went away: as the HTTP path counts it
            series.by_class[0] += 1
            counts = self.decision.route.counters.errors_by_code
            counts["client_closed"] = counts.get("client_closed", 0) + 1
            if self.trace is not None or self.access_log is not None:
                self._report(0, None, "client_closed")
            return
        series.by_class[status // 100 if status < 600 else 5] += 1
        end = time.perf_counter()
        total = end - self.received_at
        upstream = end - self.sent_at
        series.duration.counts[bisect_left(series.duration.bounds, total)] += 1
        series.duration.total += total
        series.upstream.counts[bisect_left(series.upstream.bounds, upstream)] += 1
        series.upstream.total += upstream
        added = total - upstream if total > upstream else 0.0
        series.overhead.counts[bisect_left(series.overhead.bounds, added)] += 1
        series.overhead.total += added
        if self.trace is not None:
            series.duration.exemplar(total, self.trace.trace_hex, time.time())
        if self.trace is not None or self.access_log is not None:
            self._report(status, None, str(status) if status >= 500 else "")

    def failed(self, err: GatewayError) -> None:
        """Count an error the gateway answers for this route (after routing)."""
        counts = self.decision.route.counters.errors_by_code
        counts[err.code] = counts.get(err.code, 0) + 1
        if self.series is not None:
            self.series.by_class[err.status // 100] += 1
        if self.trace is not None or self.access_log is not None:
            self._report(err.status, err, err.code)

    def _report(self, status: int, err: GatewayError | None, error_type: str) -> None:
        """How the call ended, to its trace and the access log (one of them is on)."""
        variant = self.variant
        route = self.decision.route
        record = RequestRecord(
            method="POST",
            path=f"/{SERVICE}/{self.method}",
            request_id=self.request_id,
            route=route.name,
            operation="infer" if self.method in ("ModelInfer", "ModelStreamInfer") else "",
            variant=variant.name,
            version=variant.version,
            endpoint=variant.endpoints[self.idx].backend if self.attempts else "",
            status=status,
            attempts=self.attempts,
            fallback=variant is not self.decision.variant,
            response_model=variant.upstream_model or route.name,
            duration=time.perf_counter() - self.received_at,
            error_type=error_type,
            error_message=err.message if err is not None else "",
            rpc_service=SERVICE,
            rpc_method=self.method,
        )
        trace = self.trace
        if trace is not None:
            trace.finish(record, err)
        if self.access_log is not None:
            trace_id = span_id = ""
            if trace is not None:
                trace_id, span_id = trace.trace_hex, trace.span_hex
            elif self.caller:
                caller = parse_traceparent(self.caller)
                if caller is not None:
                    trace_id, span_id = f"{caller[0]:032x}", f"{caller[1]:016x}"
            self.access_log.offer(record.access_line(trace_id, span_id, time.time()))


def upstream_message(head: Head, variant: Variant, route: str) -> bytes:
    """The request as the variant's backend must see it: its model name and version."""
    name = variant.upstream_model or route
    version = variant.model_version or head.version
    if name == head.name and version == head.version:
        return head.data
    return with_head(name, version, head)


def relayable(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    """A backend's metadata minus what gRPC manages itself and the gateway's own keys."""
    if not metadata:
        return ()
    return tuple((k, v) for k, v in metadata if not k.startswith(_RESERVED))


def reserved(key: str) -> bool:
    """Whether a metadata key is gRPC's own or the gateway's (never relayed)."""
    return key.startswith(_RESERVED)
