"""One error tree for failures the gateway itself causes, and one renderer per protocol.

Upstream error responses are relayed untouched; these classes are only for what the
gateway decides or detects (bad input, no route, unreachable backend, timeouts).
The upstream pool is the one place that turns socket/parser failures into these.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """Base class: an HTTP status, an OpenAI-style `type` and a stable `code`."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, route: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        # The compiled route it concerns, when known: a bounded metric label.
        self.route = route


class InternalError(GatewayError):
    """A bug in the gateway: logged with its traceback, answered as 500."""


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class UnknownRoute(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, route: str) -> None:
        shown = route if len(route) <= 128 else route[:128] + "..."
        super().__init__(
            f"The model '{shown}' is not served by any route of this gateway; "
            "GET /v1/models lists the routes.",
            param="model",
        )
        self.route = route


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class UpstreamError(GatewayError):
    """The backend could not be used; `retryable_kind` feeds the retry policy."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"
    retryable_kind = "reset"


class UpstreamConnectError(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    retryable_kind = "connect-error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    retryable_kind = "timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"
    retryable_kind = "reset"


class NoHealthyUpstream(UpstreamError):
    status = 503
    code = "no_healthy_upstream"
    retryable_kind = "connect-error"


class UpstreamOverflow(UpstreamError):
    status = 503
    code = "upstream_overflow"
    retryable_kind = "connect-error"


class Unavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "unavailable"


class Overloaded(GatewayError):
    """A flow-controlled pool refused a request (`gateway.dataplane.flow`): its queue
    was full; `retry_after` seconds go into the response's Retry-After."""

    status = 503
    type = "server_error"
    code = "pool_saturated"

    def __init__(self, message: str, retry_after: int, *, route: str | None = None) -> None:
        super().__init__(message, route=route)
        self.retry_after = retry_after


class QueueTimeout(Overloaded):
    """The request waited the pool's queue timeout without an endpoint freeing up."""

    code = "queue_timeout"


class OverFairShare(Overloaded):
    """Shed or timed out while its tenant held more of the pool's queue than any other."""

    status = 429
    type = "rate_limit_error"
    code = "over_fair_share"


class QueueDrained(Overloaded):
    """Waiting in a queue when the gateway began to shut down."""

    code = "unavailable"


def openai_body(err: GatewayError) -> bytes:
    """OpenAI's error envelope, which the `openai` SDK turns into typed exceptions."""
    return orjson.dumps(
        {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    )


# Errors of the data plane's compiled modules live here: mypyc ignores class-attribute
# overrides (status, code) in a compiled subclass of an interpreted class.


class ContextTooLong(BadRequest):
    """No endpoint of the pool has the context length (max_model_len) for the request's
    estimated prompt tokens plus its max_tokens (`gateway.dataplane.scorers`)."""

    code = "context_length_exceeded"

    def __init__(
        self, message: str, prompt_tokens: int, max_tokens: int, max_model_len: int
    ) -> None:
        super().__init__(message, param="messages")
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class UriTooLong(GatewayError):
    status = 414
    type = "invalid_request_error"
    code = "uri_too_long"


class ExpectationFailed(GatewayError):
    status = 417
    type = "invalid_request_error"
    code = "expectation_failed"


class UnknownRequest(NotFound):
    """Feedback for a request id the gateway does not (or no longer) remember."""

    code = "request_not_found"


class RequestExpired(UnknownRequest):
    """Feedback for a request served longer ago than the feedback window."""


class FeedbackConflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "feedback_already_recorded"


class FeedbackStoreUnavailable(Unavailable):
    """The feedback claims store did not answer: the feedback was not recorded (retry)."""

    code = "feedback_store_unavailable"


class AuthRejected(GatewayError):
    """A request refused by key checking or its key's quotas; `extra` holds the
    response's extra header lines (`gateway.dataplane.auth`, `gateway.dataplane.quota`):
    a `retry_after` in seconds becomes its Retry-After."""

    extra = b""

    def __init__(self, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        if retry_after:
            self.extra = b"retry-after: %d\r\n" % retry_after


class QuotaExceeded(AuthRejected):
    """A key (or its tenant) over one of its limits: rpm, tpm or a budget."""

    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, code: str, retry_after: int) -> None:
        super().__init__(message, retry_after)
        self.code = code


class QuotaStoreDown(AuthRejected):
    """The quota store is down and `--quota-redis-down closed` refuses what needs a lease."""

    status = 503
    type = "server_error"
    code = "quota_store_unavailable"


def plain_body(err: GatewayError) -> bytes:
    """The `{"error": "..."}` shape that KServe v2 and Ollama clients read."""
    return orjson.dumps({"error": err.message})
