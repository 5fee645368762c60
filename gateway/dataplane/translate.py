"""OpenAI <-> Ollama translation of requests, responses, streams and errors.

Used only when a variant's backend speaks another protocol than the route's clients
(an OpenAI client whose challenger runs on Ollama, or the reverse); same-protocol
traffic is relayed byte for byte and never comes here. Streams are translated as they
arrive: each upstream read becomes the client's events for the complete lines or
events it holds, the rest waits for the next read.

What maps (see the README's translation table): messages (text parts of multi-part
content), max tokens, temperature, top_p, seed, stop, penalties; content deltas;
finish reasons (stop, length); token usage; embeddings (float or base64); errors.
What is dropped: tools/function calls, images, logprobs, n > 1, response_format.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import orjson

OPENAI = "openai"
OLLAMA = "ollama"
_OPTION_MAP = (  # OpenAI request field -> Ollama options field
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("seed", "seed"),
    ("stop", "stop"),
    ("frequency_penalty", "frequency_penalty"),
    ("presence_penalty", "presence_penalty"),
)
# Which backend path serves each client path, per direction.
_OPENAI_TO_OLLAMA_PATH = {
    b"/v1/chat/completions": b"/api/chat",
    b"/v1/completions": b"/api/generate",
    b"/v1/embeddings": b"/api/embed",
}
_OLLAMA_TO_OPENAI_PATH = {
    b"/api/chat": b"/v1/chat/completions",
    b"/api/generate": b"/v1/completions",
    b"/api/embed": b"/v1/embeddings",
    b"/api/embeddings": b"/v1/embeddings",
}
TRANSLATABLE = frozenset({(OPENAI, OLLAMA), (OLLAMA, OPENAI)})


def _text(content: Any) -> str:
    """Message content as text: OpenAI's multi-part content keeps its text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return "" if content is None else str(content)


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        return []
    return [
        {"role": str(m.get("role", "user")), "content": _text(m.get("content"))}
        for m in raw
        if isinstance(m, dict)
    ]


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000Z"


class StreamChunkTooLarge(ValueError):
    """A backend's SSE event or NDJSON line outgrew `Translator.max_chunk` unfinished."""


class Translator:
    """Translates one exchange; built per attempt from the client's parsed body."""

    # Largest partial event/line held between reads (Limits.max_stream_chunk_bytes).
    max_chunk = 1024 * 1024

    def __init__(
        self,
        front: str,
        backend: str,
        path: bytes,
        body: dict[str, Any],
        client_model: str,
        upstream_model: str,
        request_id: str,
    ) -> None:
        self.front = front
        self.backend = backend
        self.client_path = path
        self.body = body
        self.model = client_model
        self.upstream_model = upstream_model
        self.request_id = request_id
        self.kind = {
            b"/v1/chat/completions": "chat",
            b"/api/chat": "chat",
            b"/v1/completions": "completion",
            b"/api/generate": "completion",
            b"/v1/embeddings": "embed",
            b"/api/embed": "embed",
            b"/api/embeddings": "embed",
        }[path]
        default_stream = front == OLLAMA and self.kind != "embed"  # Ollama streams by default
        self.stream = bool(body.get("stream", default_stream)) and self.kind != "embed"
        self.ok = True
        self._buf = b""
        self._parts: list[bytes] = []  # non-stream / error bodies, whole
        self._started = False
        self._finish: str | None = None
        self._usage: dict[str, int] = {}
        self._t0 = time.monotonic()
        self.created = int(time.time())

    # Request -------------------------------------------------------------------------

    def request(self) -> tuple[bytes, bytes]:
        """(backend path, backend body)."""
        if self.front == OPENAI:
            return _OPENAI_TO_OLLAMA_PATH[self.client_path], orjson.dumps(self._to_ollama())
        return _OLLAMA_TO_OPENAI_PATH[self.client_path], orjson.dumps(self._to_openai())

    def _to_ollama(self) -> dict[str, Any]:
        b = self.body
        out: dict[str, Any] = {"model": self.upstream_model}
        if self.kind == "embed":
            out["input"] = b.get("input", "")
            return out
        if self.kind == "chat":
            out["messages"] = _messages(b.get("messages"))
        else:
            out["prompt"] = _text(b.get("prompt"))
        out["stream"] = self.stream
        options: dict[str, Any] = {}
        limit = b.get("max_completion_tokens", b.get("max_tokens"))
        if limit is not None:
            options["num_predict"] = limit
        for src, dst in _OPTION_MAP:
            if b.get(src) is not None:
                options[dst] = b[src]
        if options:
            out["options"] = options
        return out

    def _to_openai(self) -> dict[str, Any]:
        b = self.body
        out: dict[str, Any] = {"model": self.upstream_model}
        if self.kind == "embed":
            out["input"] = b.get("input", b.get("prompt", ""))
            out["encoding_format"] = "float"
            return out
        if self.kind == "chat":
            out["messages"] = _messages(b.get("messages"))
        else:
            out["prompt"] = _text(b.get("prompt"))
        out["stream"] = self.stream
        if self.stream:
            out["stream_options"] = {"include_usage": True}  # Ollama's final line has counts
        raw_options = b.get("options")
        options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
        if options.get("num_predict") is not None:
            out["max_tokens"] = options["num_predict"]
        for dst, src in _OPTION_MAP:
            if options.get(src) is not None:
                out[dst] = options[src]
        return out

    # Response ------------------------------------------------------------------------

    def content_type(self) -> bytes:
        if not self.ok or not self.stream:
            return b"application/json"
        return b"text/event-stream" if self.front == OPENAI else b"application/x-ndjson"

    def start(self, status: int) -> None:
        """The backend's status is known: 2xx bodies are translated, others are errors."""
        self.ok = 200 <= status < 300

    def feed(self, data: bytes) -> bytes:
        """Translate what this read completes; hold back partial lines/events."""
        if not self.ok or not self.stream:
            self._parts.append(data)
            return b""
        self._buf += data
        out: list[bytes] = []
        if self.backend == OLLAMA:  # NDJSON in
            *lines, self._buf = self._buf.split(b"\n")
            for line in lines:
                if line.strip():
                    out.append(self._from_ollama_line(orjson.loads(line)))
        else:  # SSE in
            *events, self._buf = self._buf.replace(b"\r\n", b"\n").split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        out.append(self._from_openai_event(line[5:].strip()))
        if len(self._buf) > self.max_chunk:
            # Raised inside the parser callback: the exchange ends the stream in error.
            raise StreamChunkTooLarge(
                f"a stream event over the {self.max_chunk}-byte limit "
                "(limits.max_stream_chunk_bytes)"
            )
        return b"".join(out)

    def finish(self) -> bytes:
        """Whatever completes the client's body once the backend's body is complete."""
        if not self.ok:
            return self._error_body(b"".join(self._parts))
        if self.stream:
            tail = self.feed(b"\n" if self.backend == OLLAMA else b"\n\n") if self._buf else b""
            return tail
        whole = orjson.loads(b"".join(self._parts) or b"{}")
        if self.front == OPENAI:
            return orjson.dumps(self._openai_whole(whole))
        return orjson.dumps(self._ollama_whole(whole))

    # Ollama backend -> OpenAI client ---------------------------------------------------

    def _sse(self, obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish}
            obj = "chat.completion.chunk"
            prefix = "chatcmpl-"
        else:
            choice = {"index": 0, "text": (delta or {}).get("content", ""), "finish_reason": finish}
            obj = "text_completion"
            prefix = "cmpl-"
        return {
            "id": prefix + self.request_id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def _from_ollama_line(self, line: dict[str, Any]) -> bytes:
        if "error" in line:
            return self._sse(
                {
                    "error": {
                        "message": str(line["error"]),
                        "type": "upstream_error",
                        "param": None,
                        "code": "backend_error",
                    }
                }
            )
        out: list[bytes] = []
        if not self._started and self.kind == "chat":
            self._started = True
            out.append(self._sse(self._chunk({"role": "assistant", "content": ""}, None)))
        text = (
            line.get("message", {}).get("content", "")
            if self.kind == "chat"
            else line.get("response", "")
        )
        if text:
            out.append(self._sse(self._chunk({"content": text}, None)))
        if line.get("done"):
            reason = "length" if line.get("done_reason") == "length" else "stop"
            out.append(self._sse(self._chunk({}, reason)))
            options = self.body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                usage = _usage_from_ollama(line)
                out.append(self._sse({**self._chunk(None, None), "choices": [], "usage": usage}))
            out.append(b"data: [DONE]\n\n")
        return b"".join(out)

    def _openai_whole(self, whole: dict[str, Any]) -> dict[str, Any]:
        usage = _usage_from_ollama(whole)
        reason = "length" if whole.get("done_reason") == "length" else "stop"
        if self.kind == "embed":
            vectors = whole.get("embeddings") or [whole.get("embedding", [])]
            encode = _base64_floats if self.body.get("encoding_format") == "base64" else list
            return {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": encode(v)}
                    for i, v in enumerate(vectors)
                ],
                "model": self.model,
                "usage": {
                    "prompt_tokens": usage["prompt_tokens"],
                    "total_tokens": usage["prompt_tokens"],
                },
            }
        if self.kind == "chat":
            message = whole.get("message") or {}
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": reason,
                "message": {"role": "assistant", "content": message.get("content", "")},
            }
            return {
                "id": "chatcmpl-" + self.request_id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": usage,
            }
        return {
            "id": "cmpl-" + self.request_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "text": whole.get("response", ""), "finish_reason": reason}],
            "usage": usage,
        }

    # OpenAI backend -> Ollama client ---------------------------------------------------

    def _line(self, obj: dict[str, Any]) -> bytes:
        return orjson.dumps(obj) + b"\n"

    def _from_openai_event(self, data: bytes) -> bytes:
        if data == b"[DONE]":
            return self._line(self._ollama_done({}, ""))
        event = orjson.loads(data)
        if "error" in event:
            err = event["error"]
            message = err.get("message") if isinstance(err, dict) else err
            return self._line({"error": str(message)})
        if event.get("usage"):
            self._usage = event["usage"]
        choices = event.get("choices") or []
        if not choices:
            return b""
        choice = choices[0]
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        text = (
            (choice.get("delta") or {}).get("content")
            if self.kind == "chat"
            else choice.get("text")
        )
        if not text:
            return b""
        piece: dict[str, Any] = {"model": self.model, "created_at": _iso_now(), "done": False}
        if self.kind == "chat":
            piece["message"] = {"role": "assistant", "content": text}
        else:
            piece["response"] = text
        return self._line(piece)

    def _ollama_done(self, usage: dict[str, Any], content: str) -> dict[str, Any]:
        usage = usage or self._usage
        elapsed = int((time.monotonic() - self._t0) * 1e9)
        done: dict[str, Any] = {"model": self.model, "created_at": _iso_now()}
        if self.kind == "chat":
            done["message"] = {"role": "assistant", "content": content}
        else:
            done["response"] = content
        done.update(
            done=True,
            done_reason="length" if self._finish == "length" else "stop",
            total_duration=elapsed,
            load_duration=0,
            prompt_eval_count=int(usage.get("prompt_tokens", 0)),
            prompt_eval_duration=0,
            eval_count=int(usage.get("completion_tokens", 0)),
            eval_duration=elapsed,
        )
        return done

    def _ollama_whole(self, whole: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "embed":
            vectors = [d.get("embedding", []) for d in whole.get("data", [])]
            usage = whole.get("usage") or {}
            if self.client_path == b"/api/embeddings":  # legacy single-vector endpoint
                return {"embedding": vectors[0] if vectors else []}
            return {
                "model": self.model,
                "embeddings": vectors,
                "total_duration": 0,
                "load_duration": 0,
                "prompt_eval_count": int(usage.get("prompt_tokens", 0)),
            }
        choices = whole.get("choices") or [{}]
        choice = choices[0]
        self._finish = choice.get("finish_reason")
        if self.kind == "chat":
            content = _text((choice.get("message") or {}).get("content"))
        else:
            content = str(choice.get("text", ""))
        return self._ollama_done(whole.get("usage") or {}, content)

    # Errors --------------------------------------------------------------------------

    def _error_body(self, raw: bytes) -> bytes:
        """The backend's error, re-shaped for the client's protocol (message kept)."""
        message = raw.decode("utf-8", "replace")[:2000]
        try:
            parsed = orjson.loads(raw)
            err = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
            message = str(err.get("message", err) if isinstance(err, dict) else err)
        except orjson.JSONDecodeError:
            pass
        if self.front == OPENAI:
            return orjson.dumps(
                {
                    "error": {
                        "message": message,
                        "type": "upstream_error",
                        "param": None,
                        "code": "backend_error",
                    }
                }
            )
        return orjson.dumps({"error": message})


def _usage_from_ollama(line: dict[str, Any]) -> dict[str, int]:
    prompt = int(line.get("prompt_eval_count") or 0)
    completion = int(line.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
