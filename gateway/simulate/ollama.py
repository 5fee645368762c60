"""The Ollama backend simulator.

Serves Ollama's native API on the shared HTTP core: `POST /api/chat`, `/api/generate`
(NDJSON streams, streaming by default), `/api/embed`, the legacy `/api/embeddings`,
`GET /api/tags`, `POST /api/show`, `GET /api/ps`, `GET /api/version` and `GET /`
("Ollama is running"), with per-request control by `x-sim-*` headers and fault rules on
the four inference endpoints.

Simplifications, on purpose: token counts are whitespace words; `format`, `tools`,
`think`, `images` and sampling options other than `num_predict` are accepted and
ignored; the lines of one stream share one `created_at` (they are rendered up front);
durations in the final object describe the simulated schedule (`--latency-ms` as
prompt evaluation, `--chunk-delay-ms` per streamed token), with small nominal values
where no delay is set; every served model is always "loaded".
"""

from __future__ import annotations

import hashlib
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from gateway.simulate import ollama_request as req
from gateway.simulate import ollama_wire as wire
from gateway.simulate.deferred import (
    EventStream,
    cut_response,
    garbage,
    hang,
    play_stream,
    reset,
)
from gateway.simulate.exchange import Deferred, Request, Response
from gateway.simulate.faults import FaultInjector, FaultPlan, FaultRule, FaultSpecError
from gateway.simulate.generate import TextModel, count_words
from gateway.simulate.server import SimServer, start_server
from gateway.simulate.stats import SimStats

INFERENCE_PATHS: Final = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")

OLLAMA_VERSION: Final = "0.12.6"
"""What `GET /api/version` reports: the Ollama release whose API this simulates."""

_MAX_DIMENSIONS: Final = 65536
_KEEP_ALIVE_NS: Final = 5 * 60 * 1_000_000_000  # Ollama's default keep_alive, 5m
# Nominal durations when no delay is configured: a warm model on a fast GPU.
_LOAD_NS: Final = 50_000
_PROMPT_TOKEN_NS: Final = 1_000
_EVAL_TOKEN_NS: Final = 10_000
_TOKEN_IDS: Final = 32_000  # vocabulary size of the simulated `context` token ids

Result = Response | Deferred


@dataclass(frozen=True, slots=True)
class OllamaOptions:
    """How an Ollama simulator behaves (the `simulate ollama` options)."""

    served_models: tuple[str, ...] = ("sim",)
    """Models `/api/tags` lists; a name without a tag gets `:latest`, as in Ollama."""
    latency_ms: float = 0.0
    """Delay before a response, or before the first line of a stream."""
    chunk_delay_ms: float = 0.0
    """Delay between the token lines of a stream."""
    tokens: int = 16
    """Tokens per answer, unless `options.num_predict` or `x-sim-tokens` says fewer/other."""
    error_rate: float = 0.0
    """Share of inference requests answered 500 (the same as `--fault status=500:RATE`)."""
    faults: tuple[FaultRule, ...] = ()
    seed: int | None = None
    """Seeds the fault draws and the generated text; None draws faults unpredictably."""
    embedding_dimensions: int = 8
    context_length: int = 4096
    """What `/api/show` and `/api/ps` report as the models' context length."""
    strict_models: bool = False
    """Answer 404 for a model not in `served_models`, as Ollama does for a model it has
    not pulled; off by default so a gateway may pass route names through."""
    version: str = OLLAMA_VERSION

    def __post_init__(self) -> None:
        if not self.served_models or not all(self.served_models):
            raise ValueError("served_models needs at least one non-empty name")
        if self.latency_ms < 0 or self.chunk_delay_ms < 0:
            raise ValueError("delays must not be negative")
        if self.tokens < 0:
            raise ValueError("tokens must not be negative")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if not 1 <= self.embedding_dimensions <= _MAX_DIMENSIONS:
            raise ValueError(f"embedding_dimensions must be 1..{_MAX_DIMENSIONS}")
        if self.context_length < 1:
            raise ValueError("context_length must be at least 1")

    def fault_rules(self) -> list[FaultRule]:
        """`faults`, with `error_rate` as the first rule."""
        rules = list(self.faults)
        if self.error_rate > 0:
            rules.insert(0, FaultRule("status", 500.0, self.error_rate))
        return rules


class OllamaSimulator:
    """A `Handler` answering Ollama's native API the way `ollama serve` does.

    `clock` gives the wall time in nanoseconds (`time.time_ns`); tests pass a fixed one.
    """

    def __init__(
        self,
        options: OllamaOptions,
        faults: FaultInjector,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._options = options
        self._faults = faults
        self._clock = clock
        self._text = TextModel(options.seed)
        self._latency_s = options.latency_ms / 1000.0
        self._chunk_delay_s = options.chunk_delay_ms / 1000.0
        self._timestamp = wire.Rfc3339()
        self._started_at = self._timestamp(clock())
        cards = [self._card(name) for name in options.served_models]
        self._cards = {req.canonical(card.name): card for card in cards}
        self._tags_body = wire.tags_response(list(self._cards.values()))
        self._version_body = wire.version_response(options.version)
        self._routes: dict[tuple[str, str], Callable[[Request], Result]] = {
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/generate"): self._generate,
            ("POST", "/api/embed"): self._embed,
            ("POST", "/api/embeddings"): self._embeddings,
            ("GET", "/api/tags"): self._tags,
            ("HEAD", "/api/tags"): self._tags,
            ("POST", "/api/show"): self._show,
            ("GET", "/api/ps"): self._ps,
            ("GET", "/api/version"): self._version,
            ("HEAD", "/api/version"): self._version,
            ("GET", "/"): self._root,
            ("HEAD", "/"): self._root,
        }
        self._paths = frozenset(path for _, path in self._routes)

    def __call__(self, request: Request) -> Result:
        """Route `request`; like gin, unknown paths get a plain-text 404 and known paths
        with the wrong method a plain-text 405."""
        route = self._routes.get((request.method, request.path))
        if route is not None:
            return route(request)
        if request.path in self._paths:
            return Response(405, wire.METHOD_NOT_ALLOWED, wire.TEXT_CONTENT_TYPE)
        return Response(404, wire.NOT_FOUND, wire.TEXT_CONTENT_TYPE)

    # -- endpoints ---------------------------------------------------------------------

    def _chat(self, request: Request) -> Result:
        return self._inference(request, "ChatRequest", self._chat_result)

    def _generate(self, request: Request) -> Result:
        return self._inference(request, "GenerateRequest", self._generate_result)

    def _embed(self, request: Request) -> Result:
        return self._inference(request, "EmbedRequest", self._embed_result)

    def _embeddings(self, request: Request) -> Result:
        return self._inference(request, "EmbeddingRequest", self._embeddings_result)

    def _tags(self, request: Request) -> Result:
        return _ok(b"" if request.method == "HEAD" else self._tags_body)

    def _version(self, request: Request) -> Result:
        return _ok(b"" if request.method == "HEAD" else self._version_body)

    def _root(self, request: Request) -> Result:
        body = b"" if request.method == "HEAD" else wire.RUNNING
        return Response(200, body, wire.TEXT_CONTENT_TYPE)

    def _ps(self, request: Request) -> Result:
        expires_at = self._timestamp(self._clock() + _KEEP_ALIVE_NS)
        return _ok(wire.ps_response(list(self._cards.values()), expires_at))

    def _show(self, request: Request) -> Result:
        try:
            body = req.parse_body(request.body, "ShowRequest")
            # `name` is the deprecated spelling Ollama still accepts.
            name = req.string_field(body, "ShowRequest", "model") or req.model_name(
                body, "ShowRequest", "name"
            )
            card = self._cards.get(req.canonical(name))
            if card is None:
                if self._options.strict_models:
                    raise req.InvalidRequest(f"model '{name}' not found", status=404)
                card = self._card(name)
        except req.InvalidRequest as exc:
            return _error(exc.status, str(exc))
        return _ok(wire.show_response(card))

    # -- shared inference path ---------------------------------------------------------

    def _inference(
        self,
        request: Request,
        struct: str,
        build: Callable[[req.Body, FaultPlan, float], Result],
    ) -> Result:
        try:
            plan = self._faults.plan(request.headers)
        except FaultSpecError as exc:
            return _error(400, str(exc))
        latency = self._latency_s if plan.latency_s is None else plan.latency_s
        if plan.hang:
            return hang
        if plan.garbage:
            return garbage(latency)
        if plan.reset:
            return reset(latency)
        if plan.status is not None:
            return replace(_error(plan.status, f"simulated failure: {plan.status}"), delay=latency)
        try:
            return build(req.parse_body(request.body, struct), plan, latency)
        except req.InvalidRequest as exc:
            return _error(exc.status, str(exc))

    def _chat_result(self, body: req.Body, plan: FaultPlan, latency: float) -> Result:
        model = self._model(body, "ChatRequest")
        stream = req.stream_flag(body, "ChatRequest")
        texts = req.chat_texts(body)
        limit = req.num_predict(req.options(body, "ChatRequest"))
        env = self._envelope(model)
        if not texts:
            reason = "unload" if req.unloads(body, "ChatRequest") else "load"
            return self._full(wire.load_response(env, True, reason), plan, latency)
        completion = self._complete(self._text.key(texts), limit, plan)
        prompt_tokens = sum(count_words(text) for text in texts)
        if stream:
            metrics = self._metrics(prompt_tokens, completion, latency, self._chunk_delay(plan))
            return self._play(wire.chat_stream(env, completion, metrics), plan, latency)
        metrics = self._metrics(prompt_tokens, completion, latency, 0.0)
        return self._full(wire.chat_response(env, completion, metrics), plan, latency)

    def _generate_result(self, body: req.Body, plan: FaultPlan, latency: float) -> Result:
        struct = "GenerateRequest"
        model = self._model(body, struct)
        stream = req.stream_flag(body, struct)
        prompt = req.string_field(body, struct, "prompt")
        system = req.string_field(body, struct, "system")
        raw = req.bool_field(body, struct, "raw")
        history = req.int_list(body, struct, "context")
        limit = req.num_predict(req.options(body, struct))
        if raw and (system or history or req.string_field(body, struct, "template")):
            raise req.InvalidRequest("raw mode does not support template, system, or context")
        env = self._envelope(model)
        if not prompt:
            reason = "unload" if req.unloads(body, struct) else "load"
            return self._full(wire.load_response(env, False, reason), plan, latency)
        words = [*system.split(), *prompt.split()]
        key_texts = [",".join(map(str, history)), system, prompt]
        completion = self._complete(self._text.key(key_texts), limit, plan)
        # `context` encodes the conversation so far: earlier context, prompt, answer.
        context = None if raw else [*history, *_token_ids(words), *_token_ids(completion.tokens)]
        prompt_tokens = len(history) + len(words)
        if stream:
            metrics = self._metrics(prompt_tokens, completion, latency, self._chunk_delay(plan))
            return self._play(
                wire.generate_stream(env, completion, context, metrics), plan, latency
            )
        metrics = self._metrics(prompt_tokens, completion, latency, 0.0)
        return self._full(wire.generate_response(env, completion, context, metrics), plan, latency)

    def _embed_result(self, body: req.Body, plan: FaultPlan, latency: float) -> Result:
        model = self._model(body, "EmbedRequest")
        inputs = req.embed_inputs(body)
        wanted = req.dimensions(body)
        req.num_predict(req.options(body, "EmbedRequest"))  # validated like Ollama does
        vectors = [self._embedding(text, wanted) for text in inputs]
        prompt_tokens = sum(count_words(text) for text in inputs)
        prompt_ns = round(latency * 1e9) or prompt_tokens * _PROMPT_TOKEN_NS
        metrics = wire.Metrics(_LOAD_NS + prompt_ns, _LOAD_NS, prompt_tokens, 0, 0, 0)
        return self._full(wire.embed_response(model, vectors, metrics), plan, latency)

    def _embeddings_result(self, body: req.Body, plan: FaultPlan, latency: float) -> Result:
        model = req.model_name(body, "EmbeddingRequest")
        if self._options.strict_models and req.canonical(model) not in self._cards:
            raise req.InvalidRequest(f'model "{model}" not found, try pulling it first', status=404)
        prompt = req.string_field(body, "EmbeddingRequest", "prompt")
        req.num_predict(req.options(body, "EmbeddingRequest"))
        vector = self._embedding(prompt, 0) if prompt else []
        return self._full(wire.embedding_response(vector), plan, latency)

    # -- helpers -----------------------------------------------------------------------

    def _model(self, body: req.Body, struct: str) -> str:
        model = req.model_name(body, struct)
        if self._options.strict_models and req.canonical(model) not in self._cards:
            raise req.InvalidRequest(f"model '{model}' not found", status=404)
        return model

    def _complete(self, key: int, limit: int | None, plan: FaultPlan) -> wire.Completion:
        wanted = self._options.tokens if plan.tokens is None else plan.tokens
        if limit is not None and limit < wanted:
            return wire.Completion(self._text.tokens(key, limit), "length")
        return wire.Completion(self._text.tokens(key, wanted), "stop")

    def _embedding(self, text: str, wanted: int) -> list[float]:
        full = self._text.embedding(self._text.key([text]), self._options.embedding_dimensions)
        if not 0 < wanted < len(full):
            return full
        # Like Ollama: truncate, then normalise again (a Matryoshka-style prefix).
        head = full[:wanted]
        norm = math.sqrt(sum(v * v for v in head)) or 1.0
        return [v / norm for v in head]

    def _metrics(
        self, prompt_tokens: int, completion: wire.Completion, latency: float, chunk_delay: float
    ) -> wire.Metrics:
        eval_count = len(completion.tokens)
        prompt_ns = round(latency * 1e9) or prompt_tokens * _PROMPT_TOKEN_NS
        eval_ns = eval_count * (round(chunk_delay * 1e9) or _EVAL_TOKEN_NS)
        total = _LOAD_NS + prompt_ns + eval_ns
        return wire.Metrics(total, _LOAD_NS, prompt_tokens, prompt_ns, eval_count, eval_ns)

    def _envelope(self, model: str) -> wire.Envelope:
        return wire.Envelope(model, self._timestamp(self._clock()))

    def _card(self, name: str) -> wire.ModelCard:
        full = req.with_tag(name)
        digest = hashlib.sha256(full.encode()).hexdigest()
        return wire.ModelCard(
            name=full,
            digest=digest,
            size=1_000_000_000 + int(digest[:6], 16),  # stable and distinct per model
            modified_at=self._started_at,
            context_length=self._options.context_length,
            embedding_length=self._options.embedding_dimensions,
        )

    def _chunk_delay(self, plan: FaultPlan) -> float:
        return self._chunk_delay_s if plan.chunk_delay_s is None else plan.chunk_delay_s

    def _full(self, body: bytes, plan: FaultPlan, latency: float) -> Result:
        response = Response(200, body, wire.JSON_CONTENT_TYPE, delay=latency)
        return response if plan.cut_after is None else cut_response(response)

    def _play(self, events: EventStream, plan: FaultPlan, latency: float) -> Result:
        return play_stream(
            events,
            latency_s=latency,
            chunk_delay_s=self._chunk_delay(plan),
            cut_after=plan.cut_after,
        )


def _ok(body: bytes) -> Response:
    return Response(200, body, wire.JSON_CONTENT_TYPE)


def _error(status: int, message: str) -> Response:
    return Response(status, wire.error_body(message), wire.JSON_CONTENT_TYPE)


def _token_ids(words: list[str]) -> list[int]:
    return [zlib.crc32(word.encode()) % _TOKEN_IDS for word in words]


async def serve_ollama(
    options: OllamaOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
) -> SimServer:
    """Start an Ollama simulator on the running loop; `await server.close()` to stop.

    `port` 0 picks a free port (read it from `server.port`); `name` defaults to
    `sim-<port>` and is sent in every `x-sim-name` header. Point the client at
    `ollama.Client(host=server.url)`.
    """
    options = options or OllamaOptions()
    faults = FaultInjector(options.fault_rules(), options.seed)
    handler = OllamaSimulator(options, faults)
    return await start_server(
        handler, stats=SimStats(), faults=faults, host=host, port=port, name=name
    )
