"""How each front's clients expect the gateway's own errors, in its protocol's shape.

Below everything that answers a client (the connection, the exchange, the fronts), so
that none of them imports a front to render an error. A base class, not a Protocol:
compiled, the connection and the exchange call it through a vtable, and the exchange
reads `protocol` on every request.
"""

from __future__ import annotations

from gateway.errors import GatewayError, openai_body, plain_body


class ErrorStyle:
    """The errors of one protocol's clients: `{"error": "..."}`, and no stream trailer."""

    protocol = ""  # the API the front's clients speak ("openai", "ollama", ...)
    content_type = b"application/json"

    def body(self, err: GatewayError) -> bytes:
        return plain_body(err)

    def stream_error(self, err: GatewayError, *, sse: bool) -> bytes:
        """Bytes that end a streamed response in error (before the connection closes)."""
        return b""


class OpenAIStyle(ErrorStyle):
    protocol = "openai"

    def body(self, err: GatewayError) -> bytes:
        return openai_body(err)

    def stream_error(self, err: GatewayError, *, sse: bool) -> bytes:
        # The openai SDK raises APIError for an SSE event carrying an "error" object.
        return b"data: " + openai_body(err) + b"\n\n" if sse else b""


class OllamaStyle(ErrorStyle):
    protocol = "ollama"

    def stream_error(self, err: GatewayError, *, sse: bool) -> bytes:
        # An NDJSON line the ollama client raises on (ResponseError); no done line follows.
        return plain_body(err) + b"\n"


class KServeStyle(ErrorStyle):
    """KServe v2 clients read errors as `{"error": "..."}` (tritonclient raises it); v2
    responses are not streams: closing early is the only signal of a cut one."""

    protocol = "kserve-v2"


class ServicesStyle(ErrorStyle):
    """JSON services answer errors as `{"error": "..."}` (BentoML's own shape); the
    connection closing mid-body is the signal of a cut response."""

    protocol = "json"
