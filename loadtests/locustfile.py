"""Locust scenarios for the Switchyard gateway: chat, streaming chat, canary traffic.

Install (into the venv, not a gateway dependency):
    .venv/bin/pip install -r loadtests/requirements.txt
Quick start (simulated backends + gateway on :8080), then in another shell:
    .venv/bin/switchyard demo
    .venv/bin/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 30s \\
        --host http://127.0.0.1:8080
One scenario only:     ... -f loadtests/locustfile.py StreamingChatUser
Web UI instead:        drop --headless and open http://127.0.0.1:8089

What each user does:
- ChatUser: non-streamed chat completions as one sticky user (its own x-user-id for
  the whole test), plus now and then a request with `x-cohort: beta`, which the demo
  policy's override sends to the challenger.
- StreamingChatUser: streamed chat completions; reads the whole SSE body up to
  `data: [DONE]`, and records time to the first event separately.

The canary split is visible in the stats: every request is renamed after the variant
that served it (the gateway's `x-switchyard-variant` header), e.g. `chat [champion]`
and `chat [challenger]`. At the end each locust process prints the split and how many
users changed variant (0 unless the policy's weights changed during the test).

Settings (environment): SWITCHYARD_ROUTE (model field, default chat),
SWITCHYARD_MAX_TOKENS (default 32).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.contrib.fasthttp import ResponseContextManager

ROUTE = os.environ.get("SWITCHYARD_ROUTE", "chat")
MAX_TOKENS = int(os.environ.get("SWITCHYARD_MAX_TOKENS", "32"))
CHAT_PATH = "/v1/chat/completions"
VARIANT_HEADER = "x-switchyard-variant"

PROMPTS = (
    "Summarise the quarterly fraud report for the risk committee.",
    "List three signals of card-not-present fraud.",
    "Explain chargeback rates to a new analyst in two sentences.",
    "Draft a short note on the new merchant-category rules.",
)


class CanaryTally:
    """Requests per variant (overrides excluded) and users that moved, for the summary.

    One per locust process (each worker prints its own); reset when a test starts so
    a second run from the web UI does not add to the first.
    """

    def __init__(self) -> None:
        self.variants: Counter[str] = Counter()
        self.moved_users = 0

    def reset(self) -> None:
        self.variants.clear()
        self.moved_users = 0

    def summary(self) -> str:
        total = sum(self.variants.values())
        if not total:
            return "switchyard canary split: no requests"
        split = ", ".join(f"{v} {n / total:.1%} ({n})" for v, n in self.variants.most_common())
        return f"switchyard canary split: {split}; users that changed variant: {self.moved_users}"


TALLY = CanaryTally()
_USER_IDS = itertools.count(1)


@events.test_start.add_listener
def _reset_tally(**_: Any) -> None:
    TALLY.reset()


@events.test_stop.add_listener
def _print_tally(**_: Any) -> None:
    print(TALLY.summary())


class _GatewayUser(FastHttpUser):
    """One application user: a stable x-user-id, so the canary keeps it on one variant."""

    abstract = True
    wait_time = between(0.05, 0.5)  # think time between requests

    def on_start(self) -> None:
        self.user_id = f"locust-{os.getpid()}-{next(_USER_IDS)}"
        self.variant: str | None = None
        self.prompts = itertools.cycle(PROMPTS)

    def _body(self, stream: bool) -> str:
        return json.dumps(
            {
                "model": ROUTE,
                "messages": [{"role": "user", "content": next(self.prompts)}],
                "max_tokens": MAX_TOKENS,
                "stream": stream,
            }
        )

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"content-type": "application/json", "x-user-id": self.user_id, **extra}

    def _name_by_variant(self, response: ResponseContextManager, name: str, sticky: bool) -> str:
        """Rename the request after its variant; note users the canary moved."""
        variant = response.headers.get(VARIANT_HEADER) or "no-variant"
        response.request_meta["name"] = f"{name} [{variant}]"
        if sticky:  # overrides bypass the weights, so they stay out of the split
            TALLY.variants[variant] += 1
            if self.variant is not None and variant != self.variant:
                TALLY.moved_users += 1
            self.variant = variant
        return variant


class ChatUser(_GatewayUser):
    """Non-streamed chat completions; 1 in 10 as a beta tester (override to challenger)."""

    weight = 3

    @task(9)
    def chat(self) -> None:
        with self.client.post(
            CHAT_PATH, data=self._body(False), headers=self._headers(), catch_response=True
        ) as response:
            self._name_by_variant(response, "chat", sticky=True)
            _check_completion(response)

    @task(1)
    def chat_beta_cohort(self) -> None:
        with self.client.post(
            CHAT_PATH,
            data=self._body(False),
            headers=self._headers(**{"x-cohort": "beta"}),
            catch_response=True,
        ) as response:
            # An override, not the user's sticky variant: kept out of the moved count.
            variant = self._name_by_variant(response, "chat beta", sticky=False)
            if _check_completion(response) and variant != "challenger":
                response.failure(f"x-cohort: beta was served by {variant}, not challenger")


class StreamingChatUser(_GatewayUser):
    """Streamed chat completions, read to the end the way an SDK reads them."""

    weight = 1

    @task
    def chat_stream(self) -> None:
        started = time.perf_counter()
        with self.client.post(
            CHAT_PATH,
            data=self._body(True),
            headers=self._headers(accept="text/event-stream"),
            stream=True,
            catch_response=True,
        ) as response:
            variant = self._name_by_variant(response, "chat stream", sticky=True)
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            # read(n) waits for n bytes: a small first read returns with the first SSE
            # event (every event is longer than 64 bytes), big reads for the rest.
            head = next(response.iter_content(chunk_size=64, decode_content=False), b"")
            first_event = time.perf_counter() if head else None
            received, tail = len(head), head
            for chunk in response.iter_content(chunk_size=16384, decode_content=False):
                received += len(chunk)
                tail = (tail + chunk)[-64:]
            # With stream=True locust stops the clock at the headers; the row should
            # show what a user waits for: the whole stream.
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            response.request_meta["response_length"] = received
            if b"data: [DONE]" not in tail:
                response.failure("stream ended without data: [DONE]")
                return
            if first_event is not None:
                self.environment.events.request.fire(
                    request_type="SSE",
                    name=f"time to first event [{variant}]",
                    response_time=(first_event - started) * 1000,
                    response_length=0,
                    exception=None,
                    context={},
                )


def _check_completion(response: ResponseContextManager) -> bool:
    """Mark the request failed unless it is a 200 chat.completion with a choice."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]!r}")
        return False
    try:
        body = response.json()
    except ValueError:
        response.failure("response is not JSON")
        return False
    if not body.get("choices"):
        response.failure("response has no choices")
        return False
    return True
