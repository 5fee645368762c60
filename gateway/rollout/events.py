"""Rollout events: one JSON log line, a counter, and a webhook POST per event.

Events are what an SRE reads afterwards ("stepped to 25% at 10:02, rolled back at
10:04: error rate 4.8% > 1%"), so each is logged as one JSON object on the
`switchyard.rollout` logger, counted in `switchyard_rollout_events_total`, kept in the
rollout's state history, and, when the policy names a `webhook`, POSTed there. The
webhook is fire-and-forget on its own task with a short timeout: a slow receiver never
delays the controller, and every delivery is counted by outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from gateway.importing import import_off_loop
from gateway.observability.rollout_metrics import RolloutCounters
from gateway.rollout.state import Event, RolloutState

if TYPE_CHECKING:
    import httpx

WEBHOOK_TIMEOUT = 5.0


def event_body(state: RolloutState, event: Event) -> dict[str, Any]:
    """The JSON an event is logged and POSTed as."""
    return {
        "source": "switchyard",
        "kind": "rollout",
        "route": state.route,
        "event": event.event,
        "at": event.at,
        "step": event.step,
        "of_steps": len(state.steps),
        "percent": event.percent,
        "status": state.status,
        "challenger": state.challenger,
        "challenger_version": state.subject,
        "champion_version": state.champion_version,
        "reason": event.reason,
        "details": event.details,
    }


class EventSink:
    """Publishes rollout events; `aclose` waits (bounded) for webhooks in flight."""

    def __init__(
        self,
        counters: RolloutCounters,
        logger: logging.Logger,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._counters = counters
        self._log = logger
        # Made by the first webhook: every gateway has a sink, few post webhooks, and
        # httpx brings ~10 MB of RSS.
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def publish(self, state: RolloutState, webhook: str | None) -> None:
        """Publish the newest event of `state`."""
        if not state.history:
            return
        body = event_body(state, state.history[-1])
        self._log.info("rollout event %s", orjson.dumps(body).decode())
        self._counters.count_event(state.route, body["event"])
        if webhook:
            task = asyncio.get_running_loop().create_task(self._post(state.route, webhook, body))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _post(self, route: str, url: str, body: dict[str, Any]) -> None:
        await import_off_loop("httpx")  # the first time: in a thread
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT, transport=self._transport)
        try:
            response = await self._client.post(url, json=body)
            ok = response.is_success
            if not ok:
                self._log.warning(
                    "rollout webhook %s answered %d for %s", url, response.status_code, route
                )
        except httpx.HTTPError as exc:
            ok = False
            self._log.warning("rollout webhook %s failed for %s: %s", url, route, exc)
        self._counters.count_webhook(route, "ok" if ok else "failed")

    async def aclose(self) -> None:
        """Let webhooks in flight finish (each is bounded by its timeout), then close."""
        if self._pending:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._pending), timeout=WEBHOOK_TIMEOUT + 1)
        if self._client is not None:
            await self._client.aclose()
