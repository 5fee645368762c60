"""JSON services (BentoML and plain JSON APIs): `POST /services/{route}/{api}`.

The route is the first path segment(s) naming a `protocol: json` route; the rest of the
path is the API, sent to `/{api}` on the variant's backends with the body untouched.
A JSON body is parsed once for the sticky key (`body:FIELD`) and drift sampling; other
content types (multipart uploads, images) pass through unread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import orjson

from gateway.dataplane.decide import RequestHead, decide
from gateway.dataplane.styles import ServicesStyle
from gateway.errors import (
    BadRequest,
    InvalidJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)

if TYPE_CHECKING:
    from gateway.dataplane.http.server import ClientConnection
    from gateway.dataplane.http.wire import Request
    from gateway.dataplane.proxy import ProxyPlane
    from gateway.dataplane.snapshot import Route, RuntimeSnapshot

PROTOCOL = "json"
PREFIX = b"/services/"


def split_service_path(snap: RuntimeSnapshot, rest: bytes) -> tuple[str, Route, bytes]:
    """(route name, route, `/api`) of what follows `/services/`.

    Route names may contain `/`, so the shortest leading run of segments that names a
    route wins; one dict lookup in the usual case.
    """
    at = rest.find(b"/")
    while at > 0:
        raw = rest[:at]
        name = (unquote_to_bytes(raw) if b"%" in raw else raw).decode("utf-8", "replace")
        route = snap.routes.get(name)
        if route is not None:
            api = rest[at:]
            if api == b"/":
                break
            return name, route, api
        at = rest.find(b"/", at + 1)
    first = rest.split(b"/", 1)[0].decode("utf-8", "replace")[:128]
    if at < 0 and first and snap.routes.get(first) is None:
        raise NotFound(f"service '{first}' is not served by any route of this gateway")
    raise NotFound(
        f"POST /services/{first}/API: the path names no API of service '{first}' "
        "(for example /services/fraud-service/predict)"
    )


def _is_json(content_type: bytes | None) -> bool:
    return content_type is None or b"json" in content_type.lower()


class ServicesFront:
    """`/services/{route}/{api}`: JSON APIs passed through to their backends."""

    style = ServicesStyle()

    def __init__(self, plane: ProxyPlane) -> None:
        self.plane = plane

    def handle(self, conn: ClientConnection, request: Request) -> None:
        plane = self.plane
        snap = plane.ref.current
        name, route, api = split_service_path(snap, request.path[len(PREFIX) :])
        if request.method != b"POST":
            raise MethodNotAllowed("/services/{route}/{api} accepts POST only")
        if route.protocol != PROTOCOL:
            raise BadRequest(f"route '{name}' speaks {route.protocol}, not json")
        body = request.body
        limit = route.max_body_bytes
        if limit is not None and len(body) > limit:
            raise PayloadTooLarge(
                f"request body of {len(body)} bytes exceeds route '{name}' limit of {limit} bytes"
            )
        parsed: dict[str, Any] | None = None
        fields = request.fields or {}
        if body and _is_json(fields.get(b"content-type")):
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
            if isinstance(value, dict):
                parsed = value
        decision = decide(
            snap, RequestHead(name, request.headers, parsed, request.fields), plane.rng
        )
        check = decision.variant.signature
        if check is not None and check.applies(api):
            # The version it was routed to: 400 naming the input that does not fit.
            if parsed is None:
                raise check.fail("the request body must be a JSON object of model inputs")
            check.check_json(parsed)
        if parsed is not None:
            plane.tap.offer(decision, parsed)
        target = api + request.query
        plane.proxy(
            conn,
            request,
            decision,
            body,
            self.style,
            parsed,
            targets=(target,) * len(route.variants),
        )
