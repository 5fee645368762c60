"""What the fronts call once a request is decided: start its exchange.

`ProxyPlane` is the request handler with the proxying half of the data plane: the
shadow mirror and `proxy`, which turns a decided request into an `Exchange` (or a
`ShadowedExchange`) and starts it on the client's connection. The fronts import this,
never the data plane that builds them (`plane.DataPlane` extends it with the listener,
the fronts table and the tick).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from gateway.dataplane.decide import Decision
from gateway.dataplane.exchange import Exchange, ResponseFilter
from gateway.dataplane.http.server import ClientConnection, RequestHandler
from gateway.dataplane.http.wire import Request
from gateway.dataplane.session_tokens import header_line, pin
from gateway.dataplane.shadow.mirror import ShadowMirror
from gateway.dataplane.snapshot import SnapshotRef
from gateway.dataplane.styles import ErrorStyle
from gateway.drift.tap import Tap
from gateway.errors import Unavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing.accesslog import AccessLog
from gateway.observability.tracing.tracer import Tracer
from gateway.settings import Settings


class ProxyPlane(RequestHandler):
    """The shared state, the shadow mirror, and `proxy` for the fronts to call."""

    def __init__(
        self,
        settings: Settings,
        ref: SnapshotRef,
        metrics: GatewayMetrics,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random | None = None,
        tap: Tap | None = None,
        tracer: Tracer | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        super().__init__(settings, ref, metrics, loop, rng, tap, tracer, access_log)
        # Shadow copies of sampled requests, for routes with a `shadow` list.
        self.shadow = ShadowMirror(settings, metrics, loop)

    def proxy(
        self,
        conn: ClientConnection,
        request: Request,
        decision: Decision,
        body: bytes,
        style: ErrorStyle,
        parsed: dict[str, Any] | None = None,
        strip_usage: bool = False,
        targets: tuple[bytes, ...] | None = None,
        response_filter: Callable[[], ResponseFilter] | None = None,
    ) -> None:
        """Send the request to the decision's backends; `targets` (per variant index)
        replace the client's path upstream, `response_filter` rewrites the answer."""
        if self.draining:
            raise Unavailable("the gateway is shutting down; retry on another replica")
        ask = None
        picker = decision.variant.picker
        pinned = None
        if picker is not None and picker.session_issue:
            # The session token the gateway issues pins the variant (session_tokens).
            pinned = pin(decision, request.fields, self.feedback_ids)
            decision = pinned.decision
            picker = decision.variant.picker
        if picker is not None:
            # What the pool's scorers need of the request; a request no endpoint of the
            # pool has the context for is refused here (400), before quotas charge it.
            ask = picker.ask(request.body, parsed, request.fields)
            if pinned is not None:
                ask.session, ask.rejected = pinned.token, pinned.rejected
                ask.issued = header_line(pinned.token)
            picker.check_fit(ask, parsed)
        charge = None
        key = request.key
        if key is not None and key.metered and key.quotas is not None:
            # The key's quotas, pre-charged from an estimate (429 / 503 raised here);
            # the exchange reconciles the charge to the usage when the response ends.
            charge = key.quotas.admit(
                key,
                decision.route.name,
                decision.variant.version,
                request.path,
                parsed,
                len(request.body),
            )
        if decision.route.shadows:  # the shadow feature's whole cost on other routes
            exchange = self.shadow.exchange(
                self, conn, request, decision, body, style, parsed, targets
            )
        else:
            exchange = Exchange(self, conn, request, decision, body, style, parsed)
        if targets is not None:
            exchange.targets = targets
            exchange.response_filter = response_filter
        exchange.strip_usage = strip_usage
        exchange.charge = charge
        exchange.ask = ask
        conn.start_exchange(exchange)
