"""Fronts: the protocols clients speak, mapped onto routes.

A front reads the route name from the path or the body (one orjson parse, which also
gives `stream` and sticky body fields), asks `decide`, and hands the exchange the body
to send. Each front renders the gateway's own errors the way its clients expect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import orjson

from gateway.dataplane.decide import Decision, RequestHead, decide
from gateway.dataplane.feedback import labels
from gateway.dataplane.feedback.groundtruth import GroundTruth
from gateway.dataplane.feedback.ids import SignedFeedback, is_signed
from gateway.dataplane.feedback.log import FEEDBACK_PATH, read_feedback, result_of
from gateway.dataplane.http.server import ClientConnection, ResponseSource
from gateway.dataplane.http.wire import Request
from gateway.dataplane.proxy import ProxyPlane
from gateway.dataplane.shared import SharedState
from gateway.dataplane.styles import ErrorStyle, OllamaStyle, OpenAIStyle
from gateway.errors import (
    BadRequest,
    FeedbackConflict,
    FeedbackStoreUnavailable,
    GatewayError,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnknownRoute,
)

log = logging.getLogger("switchyard.feedback")

# A claim is bounded by its store (Redis 1.5 s, SQLite its 1 s lock wait); past this
# backstop the data plane's tick answers 503 itself. Retry-After of a 503, in seconds.
CLAIM_DEADLINE = 5.0
RETRY_AFTER = b"retry-after: 1\r\n"
# Claims in flight: the loop holds tasks only weakly, and a claim outlives its answer
# when the deadline answered first.
_CLAIMING: set[asyncio.Task[None]] = set()


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong and where."""
    if not body:
        raise InvalidJSON("request body is empty; expected a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidJSON(f"request body must be a JSON object, not {type(parsed).__name__}")
    return parsed


def route_body_request(
    plane: ProxyPlane, request: Request, protocol: str, api: str
) -> tuple[dict[str, Any], Decision]:
    """Parse a body that names its route in `model`, decide, and check the route fits."""
    body = parse_json_object(request.body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required: a string naming the route", param="model")
    decision = decide(
        plane.ref.current, RequestHead(model, request.headers, body, request.fields), plane.rng
    )
    route = decision.route
    if route.protocol != protocol:
        raise BadRequest(f"route '{model}' speaks {route.protocol}, not {api}", param="model")
    if route.max_body_bytes is not None and len(request.body) > route.max_body_bytes:
        raise PayloadTooLarge(
            f"request body of {len(request.body)} bytes exceeds route '{model}' limit "
            f"of {route.max_body_bytes} bytes"
        )
    return body, decision


def handle_feedback(
    plane: SharedState, conn: ClientConnection, request: Request, style: ErrorStyle
) -> None:
    """Answer one `POST /v1/feedback`: 200 with who served the request, else 4xx/503.

    A signed id is verified here and claimed in the claims store (`FeedbackClaim`, an
    answer that comes later, in order); a plain id is looked up in this process's log
    (and claimed like the signed id its response carried, when it has one).
    """
    if request.method != b"POST":
        raise MethodNotAllowed("/v1/feedback accepts POST only")
    exposures = plane.exposures
    try:
        feedback = read_feedback(request.body)
        rid, outcome, reward = feedback.request_id, feedback.outcome, feedback.reward
        fid = rid
        if not is_signed(rid) or exposures.holds(rid):
            # A plain id (a client's own x-request-id, one that merely looks signed):
            # claimed under the signed id its response also carried, if it had one.
            fid = exposures.signed_id_of(rid)
        if feedback.label is not None:
            # Labels come late (ground_truth.max_label_delay): the route's limit applies.
            if not fid:
                raise labels.no_signed_id(rid)
            now = time.time()
            signed = plane.feedback_ids.verify(fid, now, float("inf"))
            truth = labels.check(plane.ref.current, signed, rid, now)
            if outcome is not None or reward is not None:
                plane.feedback_ids.verify(fid, now, exposures.window)  # their window
            claim = FeedbackClaim(plane, conn, style, rid, signed, outcome, reward)
            claim.label, claim.truth = feedback.label, truth
            conn.start_exchange(claim)
            return
        if fid:
            signed = plane.feedback_ids.verify(fid, time.time(), exposures.window)
            conn.start_exchange(FeedbackClaim(plane, conn, style, rid, signed, outcome, reward))
            return
        series = exposures.take(rid, plane.now)
    except GatewayError as err:
        # Answered here, not raised: these are the client's facts (an id we no longer
        # hold), not unknown routes or malformed HTTP, and are counted as feedback.
        exposures.counted(result_of(err))
        conn.respond_error(err, style)
        return
    exposures.count(series, outcome, reward)
    exposures.counted("recorded")
    conn.respond(200, _recorded(rid, series.route, series.variant, series.version, outcome, reward))


def _recorded(
    rid: bytes, route: str, variant: str, version: str, outcome: bool | None, reward: float | None
) -> bytes:
    reply: dict[str, Any] = {
        "request_id": rid.decode(),
        "route": route,
        "variant": variant,
        "version": version,
    }
    if outcome is not None:
        reply["outcome"] = outcome
    if reward is not None:
        reply["reward"] = reward
    return orjson.dumps(reply)


class FeedbackClaim(ResponseSource):
    """A verified signed feedback while the claims store answers whether it is the first.

    The connection's current response, like an exchange: requests pipelined behind it
    wait, and are answered after it, in order. Once claimed, the feedback is counted even
    if the client left or the backstop deadline answered first (the claim is taken: a
    retry would be 409, so not counting would lose it).
    """

    # A true label (routes with a `ground_truth` block; see feedback.labels).
    label: str | None = None
    truth: GroundTruth | None = None

    def __init__(
        self,
        plane: SharedState,
        conn: ClientConnection,
        style: ErrorStyle,
        rid: bytes,
        signed: SignedFeedback,
        outcome: bool | None,
        reward: float | None,
    ) -> None:
        self.plane = plane
        self.conn = conn
        self.style = style
        self.rid = rid
        self.signed = signed
        self.outcome = outcome
        self.reward = reward
        self.deadline = plane.now + CLAIM_DEADLINE
        self.answered = False
        self.gone = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        task = self.task = self.plane.loop.create_task(self._claim())
        _CLAIMING.add(task)
        task.add_done_callback(_CLAIMING.discard)

    async def _claim(self) -> None:
        plane = self.plane
        exposures = plane.exposures
        signed = self.signed
        try:
            ttl = exposures.window
            if self.truth is not None:  # held as long as a late label may still come
                ttl = max(ttl, self.truth.max_label_delay)
            first = await plane.claims.claim(signed.key, ttl)
        except FeedbackStoreUnavailable as err:
            self._refuse(err, RETRY_AFTER)
            return
        except Exception:
            log.exception("the feedback store %s failed", plane.claims.description)
            self._refuse(
                plane.claims.unavailable("internal error, see the gateway log"), RETRY_AFTER
            )
            return
        if not first:
            shown = self.rid.decode()
            self._refuse(
                FeedbackConflict(
                    f"feedback for request {shown!r} was already recorded; each request "
                    "counts once",
                    param="request_id",
                )
            )
            return
        if self.outcome is not None or self.reward is not None:
            exposures.count_for(
                signed.route, signed.variant, signed.version, self.outcome, self.reward
            )
        joined: dict[str, Any] = {}
        if self.label is not None and self.truth is not None:
            joined = labels.record(
                plane.metrics.ground_truth, plane.tap, self.truth, signed, self.label
            )
        if self.answered:
            return  # the deadline answered 503; counted all the same (see the class)
        exposures.counted("recorded")
        self.answered = True
        self.deadline = float("inf")
        if not self.gone:
            body = _recorded(
                self.rid, signed.route, signed.variant, signed.version, self.outcome, self.reward
            )
            if joined:
                body = orjson.dumps({**orjson.loads(body), **joined})
            self.conn.respond(200, body)

    def _refuse(self, err: GatewayError, extra: bytes = b"") -> None:
        if self.answered:
            return
        self.answered = True
        self.deadline = float("inf")
        self.plane.exposures.counted(result_of(err))
        if not self.gone:
            self.conn.respond_error(err, self.style, extra=extra)

    def client_paused(self, paused: bool) -> None:
        pass  # one small answer: nothing to hold back

    def client_gone(self) -> None:
        self.gone = True  # the claim goes on: once taken, it must be counted

    def on_deadline(self, now: float) -> None:
        self.deadline = float("inf")
        self._refuse(
            self.plane.claims.unavailable(f"no answer within {CLAIM_DEADLINE:g}s"), RETRY_AFTER
        )


_OPENAI_PROXIED = frozenset({b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"})
_OPENAI_PATHS = (
    "POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, GET /v1/models, "
    "POST /v1/feedback"
)


class OpenAIFront:
    """`/v1/...`: the OpenAI API as the `openai` SDK calls it."""

    style = OpenAIStyle()

    def __init__(self, plane: ProxyPlane) -> None:
        self.plane = plane

    def handle(self, conn: ClientConnection, request: Request) -> None:
        path = request.path
        if path in _OPENAI_PROXIED:
            if request.method != b"POST":
                raise MethodNotAllowed(f"{path.decode()} accepts POST only")
            self._proxy(conn, request)
            return
        if path == FEEDBACK_PATH:
            handle_feedback(self.plane, conn, request, self.style)
            return
        if path == b"/v1/models" or path == b"/v1/models/":
            if request.method != b"GET":
                raise MethodNotAllowed("/v1/models accepts GET only")
            conn.respond(200, self.plane.ref.current.models_body)
            return
        if path.startswith(b"/v1/models/") and request.method == b"GET":
            name = path[len(b"/v1/models/") :].decode("utf-8", "replace")
            route = self.plane.ref.current.routes.get(name)
            if route is None or route.protocol != "openai":
                raise UnknownRoute(name)
            snap = self.plane.ref.current
            conn.respond(
                200,
                orjson.dumps(
                    {
                        "id": name,
                        "object": "model",
                        "created": int(snap.created_at),
                        "owned_by": "switchyard",
                    }
                ),
            )
            return
        raise NotFound(
            f"no OpenAI endpoint at {path.decode('utf-8', 'replace')[:200]}; "
            f"this gateway serves {_OPENAI_PATHS}"
        )

    def _proxy(self, conn: ClientConnection, request: Request) -> None:
        plane = self.plane
        body, decision = route_body_request(plane, request, "openai", "the OpenAI API")
        upstream_body = request.body
        strip_usage = False
        options = body.get("stream_options")
        if (
            body.get("stream") is True
            and request.path != b"/v1/embeddings"
            and not (isinstance(options, dict) and options.get("include_usage"))
        ):
            # Token metrics need the usage chunk: ask for it, and drop it from the client's
            # stream since the client did not ask.
            known = options if isinstance(options, dict) else {}
            upstream_body = orjson.dumps(
                {**body, "stream_options": {**known, "include_usage": True}}
            )
            strip_usage = True
        plane.tap.offer(decision, body)
        plane.proxy(conn, request, decision, upstream_body, self.style, body, strip_usage)


class Front(Protocol):
    """A protocol the data plane serves under a path prefix."""

    @property
    def style(self) -> ErrorStyle: ...

    def handle(self, conn: ClientConnection, request: Request) -> None: ...


_OLLAMA_PROXIED = frozenset({b"/api/chat", b"/api/generate", b"/api/embed", b"/api/embeddings"})
_OLLAMA_PATHS = (
    "POST /api/chat, POST /api/generate, POST /api/embed, POST /api/embeddings, "
    "GET /api/tags, GET /api/version"
)


class OllamaFront:
    """`/api/...`: the Ollama API as the `ollama` client calls it."""

    style = OllamaStyle()

    def __init__(self, plane: ProxyPlane) -> None:
        self.plane = plane

    def handle(self, conn: ClientConnection, request: Request) -> None:
        path = request.path
        if path in _OLLAMA_PROXIED:
            if request.method != b"POST":
                raise MethodNotAllowed(f"{path.decode()} accepts POST only")
            self._proxy(conn, request)
            return
        if path == b"/api/tags" and request.method == b"GET":
            snap = self.plane.ref.current
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.created_at))
            models = [
                {
                    "name": name,
                    "model": name,
                    "modified_at": stamp,
                    "size": 0,
                    "digest": "",
                    "details": {
                        "format": "",
                        "family": "",
                        "parameter_size": "",
                        "quantization_level": "",
                    },
                }
                for name, route in sorted(snap.routes.items())
                if route.protocol == "ollama"
            ]
            conn.respond(200, orjson.dumps({"models": models}))
            return
        if path == b"/api/version" and request.method == b"GET":
            conn.respond(200, b'{"version":"0.12.0"}')
            return
        raise NotFound(
            f"no Ollama endpoint at {path.decode('utf-8', 'replace')[:200]}; "
            f"this gateway serves {_OLLAMA_PATHS}"
        )

    def _proxy(self, conn: ClientConnection, request: Request) -> None:
        plane = self.plane
        body, decision = route_body_request(plane, request, "ollama", "the Ollama API")
        plane.tap.offer(decision, body)
        plane.proxy(conn, request, decision, request.body, self.style, body)
