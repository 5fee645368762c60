"""Shadow traffic: copies of sampled requests to shadow versions, compared off the path.

The request path pays one check for it: `ProxyPlane.proxy` asks the mirror only when
the route has shadows (`route.shadows`, an empty tuple otherwise). For such a route
the mirror draws one number against the route's largest sample (most requests stop
there); a sampled request gets a `ShadowedExchange`, an `Exchange` that also keeps a
bounded copy of the primary's answer and reports how the primary ended. The copies
(`ShadowCall`) go out right after the primary is sent, from the bytes the gateway
already holds, on the mirror's own connection pool: they can neither take nor wait
for a primary's connection, are never retried, and the client's response never waits
for them.

Load sheds shadows first: a copy beyond its shadow's `max_inflight`, or beyond the
process-wide `shadow_max_inflight`, is not sent (counted as dropped). Whatever else
keeps a sampled request from being copied (no endpoint, body too large) is counted
as skipped, and every copy sent is counted by how it ended (see `shadowcall.py`).

When both answers are in, the pair is queued and compared at the end of the loop
iteration, a few pairs per iteration (`shadowcompare.py`, pure functions); results go
to the shadow metrics and, sampled, to the comparison log (`shadowlog.py`).

gRPC ModelInfer calls are sampled the same way (`grpc_calls`, asked by the gRPC front
only for routes with shadows); their copies go to the shadows' HTTP endpoints as the
equivalent KServe v2 requests (`grpcshadow.py`), and the primary's gRPC reply is read
as a v2 answer when the pair is compared.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import orjson

from gateway.dataplane.exchange import DONE, RELAYING, Exchange
from gateway.dataplane.grpc.shadow import (
    GRPC_INFER_PATH,
    NotTranslatable,
    infer_reply_as_v2,
    infer_request_as_http,
)
from gateway.dataplane.http import wire
from gateway.dataplane.http.upstream import UpstreamPool
from gateway.dataplane.shadow.call import ANSWERED, CallOwner, ShadowCall
from gateway.dataplane.shadow.compare import Comparison, compare
from gateway.dataplane.shadow.log import ComparisonLog
from gateway.errors import GatewayError
from gateway.observability.shadow_metrics import Sample, wall_clock

if TYPE_CHECKING:
    from gateway.dataplane.decide import Decision
    from gateway.dataplane.http.server import ClientConnection
    from gateway.dataplane.shared import SharedState
    from gateway.dataplane.snapshot import Endpoint, Shadow
    from gateway.dataplane.styles import ErrorStyle
    from gateway.observability.metrics import GatewayMetrics
    from gateway.settings import Settings

log = logging.getLogger("switchyard.shadow")

TICK = 0.1  # seconds between deadline checks of copies in flight
LOG_FLUSH_TICKS = 10  # comparison log batches: every second
SWEEP_TICKS = 300  # idle shadow connections past their idle timeout: every 30 s
COMPARE_BATCH = 16  # pairs compared per loop iteration at most (bounds the stall)
MAX_BACKLOG = 4096  # pairs waiting; beyond it comparisons are dropped (counted)
_MODEL_IN_BODY = frozenset({"openai", "ollama"})
_NO_NUMBERS: Sample = (None, None, None, None, None)
PrimaryResult = tuple[int, bytes | None, float, str, str]
# gRPC metadata that must not become a copy's HTTP header: the copy's own framing and
# content headers are the gateway's to write.
_NOT_HEADERS = frozenset({b"content-type", b"inference-header-content-length", b"content-encoding"})


class ShadowedExchange(Exchange):
    """An exchange whose request was copied to shadows.

    It keeps the primary's response body, as the backend sent it, up to
    `capture_limit` bytes (only these exchanges pay for that), and tells each copy how
    the primary ended, so the mirror can compare.
    """

    calls: tuple[ShadowCall, ...] = ()
    mirror: ShadowMirror
    captured: list[bytes]
    capture_limit = 0
    captured_size = 0
    shadow_sampled = True

    def start(self) -> None:
        super().start()  # the primary goes out first
        mirror = self.mirror
        now = self.plane.now
        trace = self.trace
        for call in self.calls:
            if trace is not None:  # each copy gets its span, the backend its traceparent
                call.traced(trace, self.request.method.decode())
            mirror.send(call, now)

    def on_body(self, data: bytes) -> None:
        if self.phase == RELAYING:
            size = self.captured_size + len(data)
            if size <= self.capture_limit:
                self.captured.append(data)
            self.captured_size = size
        super().on_body(data)

    def _complete(self) -> None:
        seconds = time.perf_counter() - self.sent_at
        super()._complete()
        over = self.captured_size > self.capture_limit
        body = None if over else b"".join(self.captured)
        self.captured = []
        result = (self.status, body, seconds, self.variant.name, self.variant.version)
        mirror = self.mirror
        for call in self.calls:
            mirror.primary_done(call, result)

    def _respond_error(self, err: GatewayError) -> None:
        super()._respond_error(err)
        self._primary_failed(f"gateway error {err.code}")

    def _cut_client(self, err: GatewayError) -> None:
        super()._cut_client(err)
        self._primary_failed(f"stream cut: {err.code}")

    def client_gone(self) -> None:
        if self.phase != DONE:
            super().client_gone()
            self._primary_failed("client closed the connection")

    def _primary_failed(self, why: str) -> None:
        self.captured = []
        mirror = self.mirror
        for call in self.calls:
            mirror.primary_done(call, why)


class ShadowMirror(CallOwner):
    """Samples, sends, times and compares the shadow copies of one data plane."""

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random | None = None,
    ) -> None:
        # Its own pool: a shadow never takes, or waits for, a primary's connection.
        super().__init__(UpstreamPool(settings.upstream, metrics, loop), loop)
        self.metrics = metrics.shadow
        self.max_inflight = settings.shadow_max_inflight
        self.limit = settings.shadow_max_response_bytes
        self.log_sample = settings.shadow_log_sample
        self.log: ComparisonLog | None = None
        if settings.shadow_log:
            self.log = ComparisonLog(
                settings.shadow_log, settings.shadow_log_max_bytes, self.metrics.log_records, loop
            )
        self.in_flight = 0
        self.calls: set[ShadowCall] = set()
        # Its own generator: sampling must not shift the routing RNG's draws.
        self._random = (rng or random.Random(settings.seed)).random
        self._turn = 0
        self._settled: list[ShadowCall] = []
        self._settle_handle: asyncio.Handle | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._ticks = 0
        self.closed = False

    # Sampling (on the request path of routes with shadows) ------------------------

    def exchange(
        self,
        plane: SharedState,
        conn: ClientConnection,
        request: wire.Request,
        decision: Decision,
        body: bytes,
        style: ErrorStyle,
        parsed: dict[str, Any] | None,
        targets: tuple[bytes, ...] | None,
    ) -> Exchange:
        """The exchange for a request of a route with shadows: shadowed if sampled.

        One draw against the route's largest sample settles most requests (a 10%
        shadow: 9 in 10) before anything else is looked at; each shadow then takes
        its share of the drawn ones, so every shadow still gets its own `sample`.
        """
        draw = self._random()
        if draw >= decision.route.shadow_sample or request.method != b"POST":
            return Exchange(plane, conn, request, decision, body, style, parsed)
        calls = self._sample(request, decision, body, targets, draw)
        if not calls:
            return Exchange(plane, conn, request, decision, body, style, parsed)
        exchange = ShadowedExchange(plane, conn, request, decision, body, style, parsed)
        exchange.mirror = self
        exchange.calls = calls
        exchange.capture_limit = self.limit
        exchange.captured = []
        return exchange

    def _sample(
        self,
        request: wire.Request,
        decision: Decision,
        body: bytes,
        targets: tuple[bytes, ...] | None,
        draw: float,
    ) -> tuple[ShadowCall, ...]:
        route = decision.route
        if self.closed:
            return ()
        if route.protocol == "kserve-v2" and not request.path.endswith(b"/infer"):
            return ()  # inference only: metadata, readiness and the like are not copied
        calls: list[ShadowCall] = []
        for shadow, endpoint in self._admit(decision, draw, len(body)):
            calls.append(self._call(shadow, endpoint, request, decision, body, targets))
            shadow.series.in_flight += 1
            self.in_flight += 1
        return tuple(calls)

    def _admit(self, decision: Decision, draw: float, size: int) -> list[tuple[Shadow, Endpoint]]:
        """The shadows that take a request drawn at `draw` and where each copy goes;
        those that cannot are counted as skipped or dropped."""
        admitted: list[tuple[Shadow, Endpoint]] = []
        for shadow in decision.route.shadows:
            # `draw` < the route's largest sample: the shadow with that sample takes
            # this request, the others theirs, so P(copied) = sample for each.
            if draw >= shadow.sample:
                continue
            series = shadow.series
            endpoint = self._pick(shadow)
            if endpoint is None:
                series.count(series.skipped, "no_endpoint")
            elif size > shadow.max_body_bytes:
                series.count(series.skipped, "body_too_large")
            elif series.in_flight >= shadow.max_inflight:
                series.count(series.dropped, "max_inflight")
            elif self.in_flight + len(admitted) >= self.max_inflight:
                series.count(series.dropped, "global_inflight")
            else:
                admitted.append((shadow, endpoint))
        return admitted

    # gRPC ModelInfer (asked by the gRPC front for routes with shadows) ----------------

    def grpc_calls(
        self,
        decision: Decision,
        data: bytes,
        metadata: tuple[tuple[str, str | bytes], ...],
    ) -> tuple[ShadowCall, ...]:
        """The copies of a sampled ModelInfer call, as KServe v2 HTTP requests.

        Sampled like an HTTP request (one draw, then each shadow its share). `metadata`
        is what goes to the primary backend (x-request-id included); its text entries
        become the copy's headers, as an HTTP client's headers do. A message with no
        HTTP equivalent is not copied (skipped, reason not_translatable).
        """
        draw = self._random()
        if draw >= decision.route.shadow_sample or self.closed:
            return ()
        admitted = self._admit(decision, draw, len(data))
        if not admitted:
            return ()
        try:
            body, framing = infer_request_as_http(data)
        except NotTranslatable:
            for shadow, _ in admitted:
                shadow.series.count(shadow.series.skipped, "not_translatable")
            return ()
        lines: list[bytes] = []
        request_id = b""
        for key, value in metadata:
            if not isinstance(value, str):
                continue  # binary (-bin) metadata has no HTTP header form
            name = key.encode()
            raw = value.encode()
            if name == b"x-request-id":
                request_id = raw
            elif (
                name in wire.HOP_BY_HOP_REQUEST
                or name in _NOT_HEADERS
                or name.startswith(wire.INTERNAL_PREFIX)
                or b"\r" in raw
                or b"\n" in raw
            ):
                continue
            else:
                lines += (name, b": ", raw, b"\r\n")
        lines.append(framing)
        headers = b"".join(lines)
        route = decision.route
        calls: list[ShadowCall] = []
        for shadow, endpoint in admitted:
            call = ShadowCall(
                self,
                shadow,
                endpoint,
                route.name,
                route.protocol,
                GRPC_INFER_PATH,
                b"POST",
                b"/v2/models/" + shadow.model_path + b"/infer",
                b"%sx-request-id: %s\r\nx-switchyard-shadow: %s\r\n"
                % (headers, request_id, shadow.name.encode()),
                body,
                request_id,
                self.limit,
            )
            call.grpc_primary = True
            calls.append(call)
            shadow.series.in_flight += 1
            self.in_flight += 1
        return tuple(calls)

    def send_all(self, calls: tuple[ShadowCall, ...]) -> None:
        """Send copies the gRPC front sampled (scheduled right after its primary)."""
        now = time.monotonic()
        for call in calls:
            if self.closed:
                call.end("cancelled")
            else:
                self.send(call, now)

    def _pick(self, shadow: Shadow) -> Endpoint | None:
        if shadow.unavailable is not None or not shadow.endpoints:
            return None
        endpoints = shadow.endpoints
        now = time.monotonic()
        self._turn += 1
        for step in range(len(endpoints)):
            endpoint = endpoints[(self._turn + step) % len(endpoints)]
            if endpoint.state.ejected_until <= now:
                return endpoint
        return None

    def _call(
        self,
        shadow: Shadow,
        endpoint: Endpoint,
        request: wire.Request,
        decision: Decision,
        body: bytes,
        targets: tuple[bytes, ...] | None,
    ) -> ShadowCall:
        route = decision.route
        if route.protocol == "kserve-v2":
            target = b"/v2/models/" + shadow.model_path + b"/infer" + request.query
        elif targets is not None:
            target = targets[0]  # json services: the same API path for every variant
        else:
            target = request.path + request.query
        if shadow.upstream_model is not None and route.protocol in _MODEL_IN_BODY:
            body = _with_model(body, shadow.upstream_model)
        headers = b"%sx-request-id: %s\r\nx-switchyard-shadow: %s\r\n" % (
            request.forward,
            request.request_id,
            shadow.name.encode(),
        )
        return ShadowCall(
            self,
            shadow,
            endpoint,
            route.name,
            route.protocol,
            request.path,
            request.method,
            target,
            headers,
            body,
            request.request_id,
            self.limit,
        )

    # Copies in flight ---------------------------------------------------------------

    def send(self, call: ShadowCall, now: float) -> None:
        """Send a copy (after its primary), and keep its deadline checked."""
        self.calls.add(call)
        if self._ticker is None and not self.closed:
            self._ticker = self.loop.call_later(TICK, self._tick)
        call.send(now)

    def ended(self, call: ShadowCall) -> None:
        """A copy is over (called by the copy): count it, compare if the primary is in."""
        self.calls.discard(call)
        self.in_flight -= 1
        series = call.shadow.series
        series.in_flight -= 1
        assert call.outcome is not None
        series.record_request(call.outcome, call.seconds, wall_clock())
        if call.outcome in ANSWERED and call.primary is not None:
            self._settle(call)

    def primary_done(self, call: ShadowCall, result: PrimaryResult | str) -> None:
        """How the primary ended (called by its exchange): compare if the copy is in."""
        if call.primary is not None:
            return
        call.primary = result
        if call.outcome in ANSWERED:
            self._settle(call)

    def _settle(self, call: ShadowCall) -> None:
        settled = self._settled
        if len(settled) >= MAX_BACKLOG:  # comparisons cannot keep up: shed them too
            call.shadow.series.record_comparison("dropped", _NO_NUMBERS, (), wall_clock())
            return
        settled.append(call)
        if self._settle_handle is None:
            # Compared at the end of this loop iteration, never inside the callback that
            # relays a client's bytes; a few at a time (a batch per tick stalled the
            # loop for milliseconds and showed in the primaries' p99).
            self._settle_handle = self.loop.call_soon(self._compare_settled)

    def _compare_settled(self, limit: int = COMPARE_BATCH) -> None:
        self._settle_handle = None
        batch = self._settled
        if len(batch) <= limit:  # the usual case: one or two pairs, no slicing
            self._settled = []
        else:
            batch, self._settled = batch[:limit], batch[limit:]
        if self._settled and not self.closed:
            self._settle_handle = self.loop.call_soon(self._compare_settled)
        for call in batch:
            try:
                self._compare(call)
            except Exception:
                log.exception("comparing the shadow answer of %s failed", call.request_id)

    def _compare(self, call: ShadowCall) -> None:
        shadow, primary = call.shadow, call.primary
        series = shadow.series
        now = wall_clock()
        if primary is None:
            return
        if isinstance(primary, str):
            series.record_comparison("primary_failed", _NO_NUMBERS, (), now)
            return
        status, primary_body, primary_seconds, variant, version = primary
        if call.grpc_primary and primary_body is not None and status // 100 == 2:
            try:
                primary_body = infer_reply_as_v2(primary_body)
            except NotTranslatable:
                primary_body = b""  # compared as a primary body with no v2 outputs
        answer = call.answer()
        if primary_body is None or answer is None:
            series.record_comparison("too_large", _NO_NUMBERS, (), now)
            return
        result = compare(
            call.protocol,
            call.path,
            status,
            primary_body,
            call.status,
            answer,
            shadow.tolerance,
            limit=self.limit,
        )
        seconds = call.seconds
        latency = seconds - primary_seconds if seconds is not None else None
        numbers: Sample = (
            result.similarity,
            result.length_ratio,
            result.probability_delta,
            result.max_abs_error,
            latency,
        )
        series.record_comparison(result.result, numbers, result.outputs, now)
        if self.log is not None and (self.log_sample >= 1.0 or self._random() < self.log_sample):
            self.log.offer(_record(call, result, status, variant, version, latency, now))

    def _tick(self) -> None:
        now = time.monotonic()
        for call in list(self.calls):
            if call.deadline <= now:
                call.on_deadline(now)
        self._ticks += 1
        if self.log is not None and self._ticks % LOG_FLUSH_TICKS == 0:
            self.log.flush()
        if self._ticks % SWEEP_TICKS == 0:
            self.pool.sweep()
        self._ticker = self.loop.call_later(TICK, self._tick)

    async def aclose(self) -> None:
        """Stop: copies in flight end as cancelled, the log is written, pools closed."""
        self.closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for call in list(self.calls):
            call.end("cancelled")
        if self._settle_handle is not None:
            self._settle_handle.cancel()
            self._settle_handle = None
        self._compare_settled(len(self._settled))
        if self.log is not None:
            await self.log.aclose()
        self.pool.close()


def _with_model(body: bytes, model: str) -> bytes:
    """The JSON body with `model` replaced; unchanged if it is not a JSON object."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(parsed, dict):
        return body
    parsed["model"] = model
    return orjson.dumps(parsed)


def _record(
    call: ShadowCall,
    result: Comparison,
    primary_status: int,
    variant: str,
    version: str,
    latency: float | None,
    now: float,
) -> dict[str, Any]:
    """One line of the comparison log."""
    shadow = call.shadow
    return {
        "ts": round(now, 3),
        "route": call.route,
        "shadow": shadow.name,
        "shadow_version": shadow.version,
        "primary_variant": variant,
        "primary_version": version,
        "request_id": call.request_id.decode("ascii", "replace"),
        "path": call.path.decode("utf-8", "replace"),
        "result": result.result,
        "kind": result.kind,
        "primary_status": primary_status,
        "shadow_status": call.status,
        "similarity": result.similarity,
        "length_ratio": result.length_ratio,
        "probability_delta": result.probability_delta,
        "max_abs_error": result.max_abs_error,
        "outputs": dict(result.outputs) or None,
        "latency_delta_ms": None if latency is None else round(latency * 1000, 3),
        "detail": result.detail,
        "primary_excerpt": result.primary_excerpt,
        "shadow_excerpt": result.shadow_excerpt,
    }
