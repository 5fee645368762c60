"""What every request of one process shares: settings, loop, pool, clock, counters.

The bottom of the request path's layers. The connections (`http.server`), the exchanges
and the fronts read this state and import nothing above them; the data plane
(`plane.DataPlane`) extends it with the listener, the fronts and the tick, and is the one
object that owns all of it. Each layer imports only those before it:

    styles, feedback.*, pick, http.upstream, snapshot ... (no request-path callers)
    shared        SharedState
    http.server   RequestHandler(SharedState), ResponseSource, ClientConnection
    exchange      Exchange(ResponseSource)
    shadow.call   CallOwner, ShadowCall
    shadow.mirror ShadowMirror(CallOwner), ShadowedExchange(Exchange)
    proxy         ProxyPlane(RequestHandler): the mirror and `proxy`, for the fronts
    fronts        OpenAIFront, OllamaFront (then kserve, services)
    plane         DataPlane(ProxyPlane): listener, fronts table, tick, drain

A native base class, not a Protocol: compiled, its attributes are read as struct fields,
a few dozen times per request.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from gateway.dataplane.feedback.claims import ClaimsStore, MemoryClaims
from gateway.dataplane.feedback.ids import FeedbackIds
from gateway.dataplane.feedback.log import ExposureLog
from gateway.dataplane.http.upstream import UpstreamPool
from gateway.dataplane.pick import Turns
from gateway.dataplane.snapshot import SnapshotRef
from gateway.dataplane.styles import ErrorStyle, OpenAIStyle
from gateway.drift.tap import NoTap, Tap
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing.accesslog import AccessLog
from gateway.observability.tracing.tracer import Tracer
from gateway.settings import Settings


class SharedState:
    """The per-process state the request path reads, built once and passed in."""

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
        self.settings = settings
        self.ref = ref
        self.metrics = metrics
        self.loop = loop
        self.rng = rng or random.Random(settings.seed)
        self.pool = UpstreamPool(settings.upstream, metrics, loop)
        # Drift sampling: called once per proxied request; NoTap returns at once.
        self.tap: Tap = tap if tap is not None else NoTap()
        # Who served each recent request of routes with an experiment or rollout, for
        # POST /v1/feedback (dataplane.feedback); the rollout controller sets its routes.
        self.exposures = ExposureLog(settings.feedback_capacity, settings.feedback_window)
        # Signed feedback ids and where their first feedback is claimed: a random secret
        # and this process's memory until `use_feedback` installs the configured ones.
        self.feedback_ids = FeedbackIds(os.urandom(32))
        self.claims: ClaimsStore = MemoryClaims(settings.feedback_window)
        # How errors look where no front is known yet (unparsable request, no front).
        self.default_style: ErrorStyle = OpenAIStyle()
        self.draining = False
        # The rotating start that spreads equal endpoints' load (see `pick`), HTTP and gRPC.
        self.turns = Turns()
        self._rid_prefix = os.urandom(4).hex().encode()
        self._rid_counter = 0
        # A coarse clock for the request path (time.monotonic() base): refreshed per
        # client read and per tick, so exchanges read a float instead of calling clocks.
        self.now = time.monotonic()
        # Tracing (None: off, one check per request) and the JSON access log (None: off).
        self.tracer = tracer
        self.access_log = access_log

    def use_feedback(self, ids: FeedbackIds, claims: ClaimsStore) -> None:
        """Sign with the fleet's secret and claim in its store (`feedback.fleet`)."""
        self.feedback_ids = ids
        self.claims = claims

    def new_request_id(self) -> bytes:
        self._rid_counter += 1
        return b"%s-%x" % (self._rid_prefix, self._rid_counter)
