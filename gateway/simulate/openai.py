"""The OpenAI / vLLM backend simulator.

Serves `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`,
`GET /v1/models`, `GET /health` and `GET /metrics` (vLLM's gauge names) on the shared
HTTP core, with per-request control by `x-sim-*` headers and fault rules.

Simplifications, on purpose: one choice per chat request (`n` is ignored); a list of
prompts to `/v1/completions` gets one choice per prompt; token counts are whitespace
words; sampling parameters other than `max_tokens` / `max_completion_tokens` are ignored.

Like vLLM, a prompt whose tokens plus max_tokens exceed `max_model_len` gets 400. Its
prefix cache is modelled (`gateway.simulate.prefix`): with `prefill_tokens_per_s` set,
the time to the first byte grows with the prompt tokens not in the cache, queued behind
the prefill work of the requests before it; `/sim/stats` reports hits and misses.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeGuard

import orjson

from gateway.simulate import openai_wire as wire
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
from gateway.simulate.generate import TextModel, count_words, float32_le
from gateway.simulate.prefix import PrefixCache
from gateway.simulate.server import SimServer, start_server
from gateway.simulate.stats import SimStats

INFERENCE_PATHS: Final = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_MAX_DIMENSIONS: Final = 65536

Body = dict[str, Any]
Result = Response | Deferred


@dataclass(frozen=True, slots=True)
class OpenAIOptions:
    """How an OpenAI / vLLM simulator behaves (the `simulate openai` options)."""

    served_models: tuple[str, ...] = ("sim",)
    latency_ms: float = 0.0
    """Delay before a response, or before the first chunk of a stream."""
    chunk_delay_ms: float = 0.0
    """Delay between the content chunks of a stream."""
    tokens: int = 16
    """Completion tokens per choice, unless `max_tokens` or `x-sim-tokens` says fewer/other."""
    error_rate: float = 0.0
    """Share of inference requests answered 500 (the same as `--fault status=500:RATE`)."""
    faults: tuple[FaultRule, ...] = ()
    seed: int | None = None
    """Seeds the fault draws and the generated text; None draws faults unpredictably."""
    embedding_dimensions: int = 8
    max_num_seqs: int = 256
    """Capacity `/metrics` reports against (running vs waiting, KV-cache usage)."""
    max_model_len: int = 4096
    """Context length: listed on /v1/models; longer prompts + max_tokens get 400."""
    strict_models: bool = False
    """Answer 404 for a `model` not in `served_models`, as vLLM does; off by default so a
    gateway may pass route names through."""
    prefix_cache_blocks: int = 8192
    """Prompt blocks the modelled prefix cache holds (least recently used go first)."""
    prefix_block_tokens: int = 16
    """Tokens (words) per cached block, as vLLM's default block size."""
    prefill_tokens_per_s: float = 0.0
    """Prefill rate of uncached prompt tokens, one request at a time; 0: prefill is free."""
    max_loras: int = 0
    """vLLM's --max-loras with --enable-lora: adapters one batch holds. Above 0, /metrics
    reports vllm:lora_requests_info: the adapters (`lora_modules`) of requests not yet
    answered, the first `max_loras` distinct ones running, the others waiting."""
    lora_modules: tuple[str, ...] = ()
    """Model names that are LoRA adapters (vLLM's --lora-modules NAME=PATH)."""

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
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        if self.max_model_len < 1:
            raise ValueError("max_model_len must be at least 1")
        if self.prefix_cache_blocks < 0 or self.prefix_block_tokens < 1:
            raise ValueError("prefix cache: blocks must not be negative, block tokens >= 1")
        if self.prefill_tokens_per_s < 0:
            raise ValueError("prefill_tokens_per_s must not be negative")
        if self.max_loras < 0:
            raise ValueError("max_loras must not be negative")

    def fault_rules(self) -> list[FaultRule]:
        """`faults`, with `error_rate` as the first rule."""
        rules = list(self.faults)
        if self.error_rate > 0:
            rules.insert(0, FaultRule("status", 500.0, self.error_rate))
        return rules


class _Invalid(Exception):
    """A request the API rejects; rendered as an OpenAI error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass(slots=True)
class _Usage:
    """Token and outcome counters behind the vLLM counters in `/metrics`."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)

    def add(self, prompt_tokens: int, completions: list[wire.Completion]) -> None:
        self.prompt_tokens += prompt_tokens
        for completion in completions:
            self.generation_tokens += len(completion.tokens)
            reason = completion.finish_reason
            self.finished[reason] = self.finished.get(reason, 0) + 1


class OpenAISimulator:
    """A `Handler` answering the OpenAI API the way vLLM's server does."""

    def __init__(self, options: OpenAIOptions, stats: SimStats, faults: FaultInjector) -> None:
        self._options = options
        self._stats = stats
        self._faults = faults
        self._text = TextModel(options.seed)
        self._latency_s = options.latency_ms / 1000.0
        self._chunk_delay_s = options.chunk_delay_ms / 1000.0
        self._served = frozenset(options.served_models)
        self._usage = _Usage()
        self._adapters = frozenset(options.lora_modules)
        # (answered at, adapter) of adapter requests: what /metrics reports as in the batch.
        self._lora_live: list[tuple[float, str]] = []
        self._prefix = PrefixCache(
            options.prefix_cache_blocks, options.prefix_block_tokens, options.prefill_tokens_per_s
        )
        stats.sections["prefix_cache"] = self._prefix
        # ids: a random per-process tag plus a counter, 32 hex digits like vLLM's uuids,
        # unique across simulator instances without a uuid4 per request.
        self._id_tag = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self._models_body = wire.models_list(
            options.served_models, int(time.time()), options.max_model_len
        )
        self._routes: dict[tuple[str, str], Callable[[Request], Result]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/metrics"): self._metrics,
        }
        self._paths = frozenset(path for _, path in self._routes)

    def __call__(self, request: Request) -> Result:
        """Route `request`; unknown paths get 404, known paths with the wrong method 405."""
        route = self._routes.get((request.method, request.path))
        if route is not None:
            return route(request)
        if request.path in self._paths:
            return _error(405, f"Method {request.method} not allowed on {request.path}")
        return _error(404, f"Not Found: {request.path}")

    # -- endpoints ---------------------------------------------------------------------

    def _chat(self, request: Request) -> Result:
        return self._inference(request, self._chat_result)

    def _completions(self, request: Request) -> Result:
        return self._inference(request, self._completions_result)

    def _embeddings(self, request: Request) -> Result:
        return self._inference(request, self._embeddings_result)

    def _models(self, request: Request) -> Result:
        return Response(200, self._models_body)

    def _health(self, request: Request) -> Result:
        return Response(self._faults.health_status, b"", content_type=b"")

    def _metrics(self, request: Request) -> Result:
        in_flight = self._stats.in_flight_for(INFERENCE_PATHS)
        capacity = self._options.max_num_seqs
        running = min(in_flight, capacity)
        load = wire.EngineLoad(
            model=self._options.served_models[0],
            running=running,
            waiting=in_flight - running,
            kv_cache_usage=running / capacity,
            prompt_tokens=self._usage.prompt_tokens,
            generation_tokens=self._usage.generation_tokens,
            finished=self._usage.finished,
        )
        text = wire.vllm_metrics(load)
        if self._options.max_loras:
            adapters, queued = self._lora_batch(time.monotonic())
            text += wire.lora_info(self._options.max_loras, adapters, queued, time.time())
        return Response(200, text, content_type=wire.METRICS_CONTENT_TYPE)

    def _lora_batch(self, now: float) -> tuple[list[str], list[str]]:
        """Adapters of the requests not answered yet: the first max_loras distinct ones
        (in arrival order) run, the others wait for a slot, as in vLLM's scheduler."""
        self._lora_live = [(end, name) for end, name in self._lora_live if end > now]
        distinct = list(dict.fromkeys(name for _, name in self._lora_live))
        cut = self._options.max_loras
        return distinct[:cut], distinct[cut:]

    def _lora_request(self, model: str, latency: float) -> None:
        if model in self._adapters and self._options.max_loras:
            now = time.monotonic()
            if len(self._lora_live) >= 1024:  # nobody scrapes: answered ones go here too
                self._lora_batch(now)
            self._lora_live.append((now + latency, model))

    # -- shared inference path ---------------------------------------------------------

    def _inference(
        self, request: Request, build: Callable[[Body, FaultPlan, float], Result]
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
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"Invalid JSON body: {exc}")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object")
        try:
            return build(body, plan, latency)
        except _Invalid as exc:
            return _error(exc.status, str(exc), exc.param)

    def _chat_result(self, body: Body, plan: FaultPlan, latency: float) -> Result:
        model = self._model(body)
        texts = _chat_texts(body.get("messages"))
        stream, include_usage = _stream_flags(body)
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        prompt_tokens = sum(count_words(text) for text in texts)
        self._check_context(prompt_tokens, limit, "messages")
        latency += self._prefix.admit(texts, time.monotonic())
        self._lora_request(model, latency)
        choice = self._complete(self._text.key(texts), limit, plan)
        self._usage.add(prompt_tokens, [choice])
        env = self._envelope("chatcmpl-", model)
        if stream:
            events = wire.chat_stream(env, choice, prompt_tokens, include_usage)
            return self._play(events, plan, latency)
        return self._full(wire.chat_completion(env, choice, prompt_tokens), plan, latency)

    def _completions_result(self, body: Body, plan: FaultPlan, latency: float) -> Result:
        model = self._model(body)
        prompts = _prompts(body.get("prompt"), "prompt")
        stream, include_usage = _stream_flags(body)
        limit = body.get("max_tokens")
        for _, count in prompts:
            self._check_context(count, limit, "prompt")
        now = time.monotonic()
        latency += max(self._prefix.admit(texts, now) for texts, _ in prompts)
        choices = [self._complete(self._text.key(texts), limit, plan) for texts, _ in prompts]
        prompt_tokens = sum(count for _, count in prompts)
        self._usage.add(prompt_tokens, choices)
        env = self._envelope("cmpl-", model)
        if stream:
            events = wire.text_stream(env, choices, prompt_tokens, include_usage)
            return self._play(events, plan, latency)
        return self._full(wire.text_completion(env, choices, prompt_tokens), plan, latency)

    def _embeddings_result(self, body: Body, plan: FaultPlan, latency: float) -> Result:
        model = self._model(body)
        inputs = _prompts(body.get("input"), "input")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _Invalid("encoding_format must be 'float' or 'base64'", "encoding_format")
        dimensions = body.get("dimensions")
        if dimensions is None:
            dimensions = self._options.embedding_dimensions
        elif not _is_int(dimensions) or not 1 <= dimensions <= _MAX_DIMENSIONS:
            raise _Invalid(f"dimensions must be an integer 1..{_MAX_DIMENSIONS}", "dimensions")
        vectors: list[list[float] | str] = []
        for texts, _ in inputs:
            vector = self._text.embedding(self._text.key(texts), dimensions)
            if encoding == "base64":
                vectors.append(base64.b64encode(float32_le(vector)).decode("ascii"))
            else:
                vectors.append(vector)
        prompt_tokens = sum(count for _, count in inputs)
        self._usage.add(prompt_tokens, [])
        env = self._envelope("embd-", model)
        return self._full(wire.embeddings(env, vectors, prompt_tokens), plan, latency)

    # -- helpers -----------------------------------------------------------------------

    def _model(self, body: Body) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Invalid("`model` is required and must be a non-empty string", "model")
        if self._options.strict_models and model not in self._served:
            raise _Invalid(f"The model `{model}` does not exist.", "model", status=404)
        return model

    def _check_context(self, prompt_tokens: int, limit: object, param: str) -> None:
        """vLLM's 400 for a prompt plus max_tokens over the context length."""
        wanted = limit if _is_int(limit) and limit > 0 else 0
        size = self._options.max_model_len
        if prompt_tokens + wanted > size:
            raise _Invalid(
                f"This model's maximum context length is {size} tokens. However, you "
                f"requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the "
                f"messages, {wanted} in the completion). Please reduce the length of the "
                "messages or completion.",
                param,
            )

    def _complete(self, key: int, limit: object, plan: FaultPlan) -> wire.Completion:
        wanted = self._options.tokens if plan.tokens is None else plan.tokens
        if limit is not None:
            if not _is_int(limit) or limit < 1:
                raise _Invalid("max_tokens must be a positive integer", "max_tokens")
            if limit < wanted:
                return wire.Completion(self._text.tokens(key, limit), "length")
        return wire.Completion(self._text.tokens(key, wanted), "stop")

    def _envelope(self, prefix: str, model: str) -> wire.Envelope:
        ident = f"{prefix}{self._id_tag}{next(self._ids):024x}"
        return wire.Envelope(ident, int(time.time()), model)

    def _full(self, body: bytes, plan: FaultPlan, latency: float) -> Result:
        response = Response(200, body, delay=latency)
        return response if plan.cut_after is None else cut_response(response)

    def _play(self, events: EventStream, plan: FaultPlan, latency: float) -> Result:
        chunk_delay = self._chunk_delay_s if plan.chunk_delay_s is None else plan.chunk_delay_s
        return play_stream(
            events, latency_s=latency, chunk_delay_s=chunk_delay, cut_after=plan.cut_after
        )


def _error(status: int, message: str, param: str | None = None) -> Response:
    return Response(status, wire.error_body(status, message, param))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _stream_flags(body: Body) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _Invalid("stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        # vLLM's rule: stream_options without streaming is a client bug worth reporting.
        raise _Invalid("Stream options can only be defined when `stream=True`.", "stream_options")
    if not isinstance(options, dict):
        raise _Invalid("stream_options must be an object", "stream_options")
    return True, bool(options.get("include_usage"))


def _chat_texts(messages: object) -> list[str]:
    if not isinstance(messages, list) or not messages:
        raise _Invalid("`messages` must be a non-empty list of messages", "messages")
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _Invalid("every message needs a string `role`", "messages")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            # Content parts: only text counts; images and audio add no simulated tokens.
            texts.extend(
                part["text"]
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        elif content is not None:
            raise _Invalid("message `content` must be a string or a list of parts", "messages")
    return texts


def _prompts(value: object, param: str) -> list[tuple[list[str], int]]:
    """Prompts or embedding inputs as (texts for the key, token count) pairs.

    Accepts what the API does: a string, a list of strings, a list of token ids, or a
    list of token-id lists.
    """
    if isinstance(value, str):
        return [([value], count_words(value))]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return [([item], count_words(item)) for item in value]
        if all(_is_int(item) for item in value):
            return [([",".join(map(str, value))], len(value))]
        if all(isinstance(item, list) and item and all(map(_is_int, item)) for item in value):
            return [([",".join(map(str, item))], len(item)) for item in value]
    raise _Invalid(f"`{param}` must be a string, a list of strings or a list of token ids", param)


async def serve_openai(
    options: OpenAIOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
) -> SimServer:
    """Start an OpenAI / vLLM simulator on the running loop; `await server.close()` to stop.

    `port` 0 picks a free port (read it from `server.port`); `name` defaults to
    `sim-<port>` and is sent in every `x-sim-name` header.
    """
    options = options or OpenAIOptions()
    stats = SimStats()
    faults = FaultInjector(options.fault_rules(), options.seed)
    handler = OpenAISimulator(options, stats, faults)
    return await start_server(handler, stats=stats, faults=faults, host=host, port=port, name=name)
