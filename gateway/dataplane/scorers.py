"""Scored endpoint picking for LLM pools: weighted scorers, prefix and session affinity,
context fit.

A pool whose policy declares a `picker` (see `controlplane.policy.pickerspec`) picks the
endpoint with the highest weighted sum of scores, each in 0..1:

- queue: 1 / (1 + the endpoint's load - the least load in the pool), load being the
  larger of this process's requests in flight and the backend's queued + running
  (vLLM's /metrics, as `pick.pick` reads it);
- kv_cache: 1 - the KV-cache use the backend reports;
- prefix_cache: the share of the prompt's leading blocks the endpoint is estimated to
  hold in its prefix cache, because this process sent it that prefix before;
- session: 1 for the endpoint that served the request's session last (within the TTL);
  the session key is a header, a body field, or a token the gateway issues (see
  `dataplane.session_tokens`, which also pins the session's variant);
- random: a uniform draw per endpoint (a baseline for comparisons);
- lora: what the endpoint reports (vLLM's `vllm:lora_requests_info`, scraped with
  `load_metrics: vllm`) of the LoRA adapter the variant sends upstream (`adapter`: its
  model name): 1 in its running batch, 0.5 not loaded but a slot free (fewer distinct
  adapters running or waiting than --max-loras, or no report), 0.25 queued for a slot,
  0 absent with every slot taken (vLLM would swap an adapter out for it).

The affinity scorers (prefix_cache, session, lora) count only on endpoints whose load is at
most `spread_above` over the pool's least: an overloaded endpoint loses its affinity
and the load scorers decide (SGLang's cache-aware router balances the same way).
Equal scores go to the rotation, like `pick.pick`. Endpoints that are ejected, or whose
context length (max_model_len) cannot hold the request's estimated prompt tokens plus
its max_tokens, are not candidates; when no endpoint of the pool could ever hold it the
client gets 400 context_length_exceeded with the numbers (`Picker.check_fit`).

Prefix blocks are hashed from the raw request body, never re-encoded: from the
`"messages"` (or `"prompt"`) key to the end, in blocks of `block_bytes`, each block's
hash chained to the ones before (zlib.crc32 continued over the prefix, plus the block's
depth), like vLLM's block hashes over tokens. A block's hash so names the whole prefix up
to it. The pool remembers, for a bounded number of block hashes, which endpoints were
sent that prefix (a bit per endpoint, two dict generations as an approximate LRU), and
an endpoint's score is its deepest leading block held over the prompt's block count.
Only pools whose picker weighs prefix_cache hash anything.

Adding a scorer: a weight field on `Picker` (and on `pickerspec.ScorersSpec`, its name
in `picker_metrics.WINNERS`), its per-endpoint score in 0..1 in `Picker._parts` and the
same term in `Picker.choose`'s loop; what it needs from the request goes on `Ask`
(filled in `Picker.ask`), what it needs from the backend on `EndpointState` or
`PoolState`. tests/unit/test_scorers.py checks that `choose` and `_parts` agree.

A native module (compiled with the request path): concrete classes, no imports from
above the data plane.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from zlib import crc32

import orjson

from gateway.dataplane.health import EndpointState
from gateway.dataplane.picker_state import PoolState
from gateway.errors import ContextTooLong
from gateway.observability.picker_metrics import (
    LORA_FREE,
    LORA_RESULTS,
    LORA_RUNNING,
    LORA_SWAP,
    LORA_WAITING,
    SESSION_EXPIRED,
    SESSION_HIT,
    SESSION_INVALID,
    SESSION_MISS,
    SESSION_MOVED,
    WIN_SINGLE,
    WIN_TIE,
    PickerRouteSeries,
    PickerSeries,
)

# Scorer indices: the order of `Picker._parts` and of picker_metrics.WINNERS.
QUEUE: Final = 0
KV_CACHE: Final = 1
PREFIX_CACHE: Final = 2
SESSION: Final = 3
RANDOM: Final = 4
LORA: Final = 5
SCORERS: Final = ("queue", "kv_cache", "prefix_cache", "session", "random", "lora")
# The lora scorer's score per picker_metrics.LORA_RESULTS (running, free, waiting, swap).
LORA_SCORES: Final = (1.0, 0.5, 0.25, 0.0)
_MESSAGES: Final = b'"messages"'
_PROMPT: Final = b'"prompt"'


def prefix_hashes(body: bytes, block: int, max_blocks: int) -> list[int]:
    """Chained hashes of the body's whole `block`-byte blocks from its `"messages"` (or
    `"prompt"`) key on, at most `max_blocks`: hash k names the bytes up to block k's end.
    """
    start = body.find(_MESSAGES)
    if start < 0:
        start = body.find(_PROMPT)
        if start < 0:
            start = 0
    count = (len(body) - start) // block
    if count > max_blocks:
        count = max_blocks
    out: list[int] = []
    h = 0
    pos = start
    for k in range(count):
        end = pos + block
        h = crc32(body[pos:end], h)  # a bytes slice: cheaper than a memoryview's
        out.append(h | (k << 32))  # the depth too: equal crc at two depths differ
        pos = end
    return out


def prompt_chars(parsed: Mapping[str, Any]) -> tuple[int, int]:
    """(characters of prompt text, prompt token ids) of a parsed OpenAI or Ollama body:
    message contents (strings, text parts), `prompt`, `system`, and the tools' JSON.
    Images and audio count nothing: this estimate may be low, never high for them."""
    chars = 0
    ids = 0
    messages = parsed.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict):
                        text = part.get("text")
                        if isinstance(text, str):
                            chars += len(text)
    prompt = parsed.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        for item in prompt:
            if isinstance(item, str):
                chars += len(item)
            elif isinstance(item, int):
                ids += 1
            elif isinstance(item, list):
                ids += len(item)
    system = parsed.get("system")
    if isinstance(system, str):
        chars += len(system)
    tools = parsed.get("tools")
    if tools:
        chars += len(orjson.dumps(tools))
    return chars, ids


def max_tokens_of(parsed: Mapping[str, Any] | None) -> int:
    """The completion tokens a request asks for at most (OpenAI max_completion_tokens or
    max_tokens, Ollama options.num_predict); 0 when it does not say."""
    if parsed is None:
        return 0
    value = parsed.get("max_completion_tokens")
    if value is None:
        value = parsed.get("max_tokens")
    if value is None:
        options = parsed.get("options")
        if isinstance(options, dict):
            value = options.get("num_predict")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def lora_result(state: EndpointState, adapter: str) -> int:
    """What endpoint `state` reports of `adapter` (picker_metrics.LORA_RESULTS index)."""
    if adapter in state.lora_running:
        return LORA_RUNNING
    if state.lora_free:
        return LORA_FREE
    if adapter in state.lora_waiting:
        return LORA_WAITING
    return LORA_SWAP


class Ask:
    """What the scorers need of one request: computed once, before its first pick."""

    __slots__ = (
        "chars",
        "exact",
        "hashes",
        "issued",
        "max_tokens",
        "rejected",
        "session",
        "tokens",
    )

    def __init__(self, hashes: list[int], session: bytes, tokens: int, max_tokens: int) -> None:
        self.hashes = hashes  # chained prefix block hashes (prefix_cache only)
        self.session = session  # the session key, b"" for none (session only)
        self.tokens = tokens  # estimated prompt tokens (0 = not checked)
        self.max_tokens = max_tokens
        self.exact = False  # tokens counted from the prompt's text, not the body's size
        self.chars = 0  # the text's characters, when exact
        # Issued sessions (session_tokens.pin sets them): the response header line that
        # hands the client its token, and whether the token it sent did not verify.
        self.issued = b""
        self.rejected = False


class Picker:
    """A pool's compiled picker: weights, options, and the pool's shared state."""

    def __init__(
        self,
        route: str,
        variant: str,
        weights: tuple[float, float, float, float, float, float],
        states: tuple[EndpointState, ...],
        slots: tuple[int, ...],
        series: tuple[PickerSeries, ...],
        route_series: PickerRouteSeries,
        pool: PoolState,
        *,
        block_bytes: int = 512,
        max_blocks: int = 16,
        session_header: bytes = b"",
        session_field: str = "",
        session_issue: bool = False,
        session_ttl: float = 1800.0,
        spread_above: int = 8,
        fit: bool = True,
        max_model_len: int = 0,
        chars_per_token: float = 4.0,
        reported: dict[str, int] | None = None,
        adapter: str = "",
    ) -> None:
        self.route = route
        self.variant = variant
        (
            self.w_queue,
            self.w_kv,
            self.w_prefix,
            self.w_session,
            self.w_random,
            self.w_lora,
        ) = weights
        self.states = states
        self.slots = slots
        self.series = series
        self.route_series = route_series
        self.pool = pool
        self.block_bytes = block_bytes
        self.max_blocks = max_blocks
        self.session_header = session_header
        self.session_field = session_field
        self.session_issue = session_issue  # the key is a token this gateway issues
        self.session_ttl = session_ttl
        self.spread_above = spread_above
        self.fit = fit
        self.max_model_len = max_model_len  # the policy's; 0: what the backends report
        self.chars_per_token = chars_per_token
        # backend -> context length it reported, for /metrics (the context watcher's).
        self.reported: dict[str, int] = reported if reported is not None else {}
        # The model name the variant sends upstream: the LoRA adapter its requests want.
        self.adapter = adapter

    def weights(self) -> tuple[float, float, float, float, float, float]:
        return (
            self.w_queue,
            self.w_kv,
            self.w_prefix,
            self.w_session,
            self.w_random,
            self.w_lora,
        )

    def describe(self) -> dict[str, Any]:
        """The picker's settings, for `policy explain` and the admin API."""
        weights = self.weights()
        view: dict[str, Any] = {
            "scorers": {name: weights[k] for k, name in enumerate(SCORERS) if weights[k]},
            "spread_above": self.spread_above,
        }
        if self.w_prefix:
            view["prefix_cache"] = {
                "block_bytes": self.block_bytes,
                "max_blocks": self.max_blocks,
                "blocks_known": self.pool.blocks(),
            }
        if self.w_session:
            if self.session_issue:
                key = "issued (x-switchyard-session)"
            elif self.session_header:
                key = "header:" + self.session_header.decode("latin-1")
            else:
                key = "body:" + self.session_field
            view["session"] = {
                "key": key,
                "ttl": self.session_ttl,
                "sessions_known": len(self.pool.sessions),
            }
        if self.w_lora:
            view["lora"] = {"adapter": self.adapter}
        view["context"] = {
            "fit": self.fit,
            "max_model_len": self.max_model_len or None,  # None: what each endpoint reports
            "chars_per_token": self.chars_per_token,
        }
        return view

    # The request's side ------------------------------------------------------------

    def ask(
        self, body: bytes, parsed: Mapping[str, Any] | None, fields: Mapping[bytes, bytes] | None
    ) -> Ask:
        """What this picker's scorers need of the request; only what they use is
        computed. The token estimate here is the body's size (an upper bound of its
        text); `check_fit` counts the text when that bound does not fit."""
        hashes: list[int] = (
            prefix_hashes(body, self.block_bytes, self.max_blocks) if self.w_prefix else []
        )
        session = b""
        if self.w_session and not self.session_issue:  # issued: session_tokens.pin sets it
            if self.session_header:
                if fields is not None:
                    session = fields.get(self.session_header, b"")
            elif parsed is not None:
                value = parsed.get(self.session_field)
                if isinstance(value, str):
                    session = value.encode()
                elif isinstance(value, int):
                    session = str(value).encode()
        tokens = 0
        max_tokens = 0
        if self.fit:
            tokens = int(len(body) / self.chars_per_token) + 1
            max_tokens = max_tokens_of(parsed)
        return Ask(hashes, session, tokens, max_tokens)

    def fits(self, ask: Ask, i: int) -> bool:
        """Whether endpoint i has the context for the request (unknown sizes do)."""
        if not ask.tokens:
            return True
        size = self.limit(i)
        return not size or ask.tokens + ask.max_tokens <= size

    def limit(self, i: int) -> int:
        """Endpoint i's context length: the policy's, else what it reported; 0 unknown."""
        if self.max_model_len:
            return self.max_model_len
        return self.pool.lengths[self.slots[i]]

    def check_fit(self, ask: Ask, parsed: Mapping[str, Any] | None, count: bool = True) -> None:
        """Raise ContextTooLong when no endpoint of the pool can hold the request (and
        count it, unless `count` is false: explain). Cheap when the body's size fits the
        smallest context: no text count."""
        if not ask.tokens:
            return
        need = ask.tokens + ask.max_tokens
        largest = 0
        smallest = 0
        for i in range(len(self.states)):
            size = self.limit(i)
            if not size:
                ask.tokens = 0  # an endpoint of unknown size: nothing is checked
                return
            if size > largest:
                largest = size
            if smallest == 0 or size < smallest:
                smallest = size
        if need <= smallest:
            ask.tokens = 0  # fits everywhere: choose need not check
            return
        if parsed is not None and not ask.exact:
            chars, ids = prompt_chars(parsed)
            ask.tokens = int(chars / self.chars_per_token + 0.5) + ids
            ask.exact = True
            ask.chars = chars
            need = ask.tokens + ask.max_tokens
            if need <= smallest:
                ask.tokens = 0
                return
        if need <= largest:
            return
        if count:
            self.route_series.context_refusals += 1
        raise ContextTooLong(
            f"this request needs about {need} tokens of context: {ask.tokens} prompt "
            f"tokens (estimated, {ask.chars} characters at {self.chars_per_token:g} per "
            f"token) plus max_tokens {ask.max_tokens}; the largest context length "
            f"(max_model_len) of route '{self.route}' variant '{self.variant}' is "
            f"{largest}. Shorten the messages or lower max_tokens.",
            ask.tokens,
            ask.max_tokens,
            largest,
        )

    # The pick --------------------------------------------------------------------------

    def choose(self, ask: Ask, now: float, turn: int) -> int:
        """Index of the endpoint to use, or -1 when none in rotation fits; records the
        pick (prefix blocks, session, metrics)."""
        states = self.states
        n = len(states)
        loads = [-1] * n  # -1: not a candidate
        least = -1
        count = 0
        need = ask.tokens + ask.max_tokens if ask.tokens else 0
        for i in range(n):
            state = states[i]
            if state.ejected_until > now:
                continue
            if need:
                size = self.limit(i)
                if size and need > size:
                    self.series[i].context_skips += 1
                    continue
            load = state.in_flight if state.in_flight > state.backlog else state.backlog
            loads[i] = load
            if least < 0 or load < least:
                least = load
            count += 1
        if count == 0:
            return -1
        pool = self.pool
        slots = self.slots
        hashes = ask.hashes
        nblocks = len(hashes)
        depths = pool.depths(hashes) if nblocks else None
        session_slot = -1
        session_result = -1
        if ask.session:
            entry = pool.sessions.get(ask.session)
            if entry is None:
                session_result = SESSION_MISS
            elif entry[1] <= now:
                session_result = SESSION_EXPIRED
            else:
                session_slot = entry[0]
                session_result = SESSION_HIT
        draws: list[float] | None = None
        if self.w_random:
            draws = [pool.rng.random() for _ in range(n)]
        spread = least + self.spread_above
        w_lora = self.w_lora
        adapter = self.adapter
        best = -1
        best_score = 0.0
        second = -1
        second_score = 0.0
        for step in range(n):
            i = (turn + step) % n
            load = loads[i]
            if load < 0:
                continue
            state = states[i]
            score = self.w_queue / (1 + load - least) + self.w_kv * (1.0 - state.kv_usage)
            if load <= spread:
                slot = slots[i]
                if depths is not None:
                    score += self.w_prefix * depths.get(slot, 0) / nblocks
                if slot == session_slot:
                    score += self.w_session
                if w_lora:  # lora_result and LORA_SCORES, inline (per endpoint)
                    if adapter in state.lora_running:
                        score += w_lora
                    elif state.lora_free:
                        score += w_lora * 0.5
                    elif adapter in state.lora_waiting:
                        score += w_lora * 0.25
            if draws is not None:
                score += self.w_random * draws[i]
            if best < 0 or score > best_score:
                second, second_score = best, best_score
                best, best_score = i, score
            elif score < best_score and (second < 0 or score > second_score):
                second, second_score = i, score  # the runner-up: the best that scored less
        series = self.series[best]
        chosen = slots[best]
        if count == 1:
            series.picks[WIN_SINGLE] += 1
        elif second < 0:
            series.picks[WIN_TIE] += 1
        else:
            won = self._winner(best, second, loads, least, depths, nblocks, session_slot, draws)
            series.picks[won] += 1
        if nblocks:
            held = depths.get(chosen, 0) if depths is not None else 0
            series.prefix_hit_blocks += held
            series.prefix_miss_blocks += nblocks - held
            if held < nblocks:
                pool.record(hashes, chosen, held)
        if w_lora:
            series.lora[lora_result(states[best], adapter)] += 1
        if session_result >= 0:
            if session_result == SESSION_HIT and session_slot != chosen:
                session_result = SESSION_MOVED
            elif ask.rejected:
                session_result = SESSION_INVALID
            series.sessions[session_result] += 1
            sessions = pool.sessions
            sessions[ask.session] = (chosen, now + self.session_ttl)
            sessions.move_to_end(ask.session)
            if len(sessions) > pool.max_sessions:
                sessions.popitem(last=False)
        return best

    def _parts(
        self,
        i: int,
        load: int,
        least: int,
        depths: dict[int, int] | None,
        nblocks: int,
        session_slot: int,
        draws: list[float] | None,
    ) -> list[float]:
        """Endpoint i's weighted score per scorer (the terms `choose` adds up)."""
        affinity = load <= least + self.spread_above
        slot = self.slots[i]
        prefix = 0.0
        if affinity and depths is not None and nblocks:
            prefix = self.w_prefix * depths.get(slot, 0) / nblocks
        lora = 0.0
        if affinity and self.w_lora:
            lora = self.w_lora * LORA_SCORES[lora_result(self.states[i], self.adapter)]
        return [
            self.w_queue / (1 + load - least),
            self.w_kv * (1.0 - self.states[i].kv_usage),
            prefix,
            self.w_session if affinity and slot == session_slot else 0.0,
            self.w_random * draws[i] if draws is not None else 0.0,
            lora,
        ]

    def _winner(
        self,
        best: int,
        second: int,
        loads: list[int],
        least: int,
        depths: dict[int, int] | None,
        nblocks: int,
        session_slot: int,
        draws: list[float] | None,
    ) -> int:
        """The scorer that put `best` furthest ahead of `second`."""
        a = self._parts(best, loads[best], least, depths, nblocks, session_slot, draws)
        b = self._parts(second, loads[second], least, depths, nblocks, session_slot, draws)
        won = QUEUE
        margin = a[0] - b[0]
        for k in range(1, len(a)):
            if a[k] - b[k] > margin:
                won, margin = k, a[k] - b[k]
        return won

    def explain(self, ask: Ask, now: float) -> list[dict[str, Any]]:
        """Per endpoint, what `choose` would see for `ask` now, recording nothing: in
        rotation or why not, load, each scorer's weighted score and the total."""
        states = self.states
        n = len(states)
        need = ask.tokens + ask.max_tokens if ask.tokens else 0
        loads = [-1] * n
        why = [""] * n
        for i in range(n):
            state = states[i]
            size = self.limit(i)
            if state.ejected_until > now:
                why[i] = "ejected"
            elif need and size and need > size:
                why[i] = f"context {size} < {need} tokens"
            else:
                loads[i] = state.in_flight if state.in_flight > state.backlog else state.backlog
        present = [load for load in loads if load >= 0]
        least = min(present) if present else 0
        pool = self.pool
        depths = pool.depths(ask.hashes) if ask.hashes else None
        session_slot = -1
        if ask.session:
            entry = pool.sessions.get(ask.session)
            if entry is not None and entry[1] > now:
                session_slot = entry[0]
        rows: list[dict[str, Any]] = []
        for i in range(n):
            row: dict[str, Any] = {
                "backend": states[i].backend,
                "candidate": loads[i] >= 0,
                "max_model_len": self.limit(i),
            }
            if loads[i] < 0:
                row["skipped"] = why[i]
            else:
                parts = self._parts(i, loads[i], least, depths, len(ask.hashes), session_slot, None)
                row["load"] = loads[i]
                row["prefix_blocks"] = depths.get(self.slots[i], 0) if depths else 0
                if self.w_lora:
                    state = states[i]
                    row["lora"] = {
                        "adapter": LORA_RESULTS[lora_result(state, self.adapter)],
                        "running": list(state.lora_running),
                        "waiting": list(state.lora_waiting),
                        "max_loras": state.max_loras,
                    }
                row["scores"] = {
                    name: round(parts[k], 4)
                    for k, name in enumerate(SCORERS)
                    if k != RANDOM and (k != LORA or self.w_lora)
                }
                row["total"] = round(sum(parts), 4)
            rows.append(row)
        return rows
