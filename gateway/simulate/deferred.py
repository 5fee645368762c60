"""Responses that unfold over time: streams with delays, and the transport faults.

Protocol modules render their events (SSE for OpenAI, NDJSON for Ollama) up front and
hand them to `play_stream`; the timing, flow control and cutting live here once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from gateway.simulate.exchange import Deferred, Headers, Responder, Response
from gateway.simulate.faults import GARBAGE


@dataclass(slots=True)
class EventStream:
    """A streamed body: `lead` events, then `content` (one per token), then `tail`."""

    content_type: bytes
    lead: list[bytes]
    content: list[bytes]
    tail: list[bytes]
    headers: Headers = ()


def play_stream(
    stream: EventStream, *, latency_s: float, chunk_delay_s: float, cut_after: int | None
) -> Response | Deferred:
    """Stream `stream` like a model server: headers at once, the first events after
    `latency_s` (time to first token), `chunk_delay_s` between content events.

    With `cut_after` N the connection closes after N content events, before the tail,
    whatever N is: a cut stream is always incomplete. Without delays or a cut every
    event is ready at once, so it goes out in one write (still one HTTP chunk per event).
    """
    if latency_s <= 0 and chunk_delay_s <= 0 and cut_after is None:
        events = [*stream.lead, *stream.content, *stream.tail]
        return Response(200, b"", stream.content_type, stream.headers, chunks=events)

    async def run(responder: Responder) -> None:
        responder.start(200, stream.content_type, stream.headers)
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        for event in stream.lead:
            responder.chunk(event)
        for index, event in enumerate(stream.content):
            if cut_after is not None and index >= cut_after:
                break
            if index and chunk_delay_s > 0:
                await asyncio.sleep(chunk_delay_s)
            responder.chunk(event)
            await responder.drain()
        if cut_after is not None:
            responder.close_connection()
            return
        for event in stream.tail:
            responder.chunk(event)
        responder.end()

    return run


def cut_response(response: Response) -> Deferred:
    """Send the headers and half the body of `response` (after its delay), then close."""

    async def run(responder: Responder) -> None:
        if response.delay > 0:
            await asyncio.sleep(response.delay)
        responder.send_partial(response, len(response.body) // 2)

    return run


def garbage(latency_s: float) -> Deferred:
    """Answer bytes that are not HTTP, then close."""

    async def run(responder: Responder) -> None:
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        responder.write_raw(GARBAGE)
        responder.close_connection()

    return run


def reset(latency_s: float) -> Deferred:
    """Reset the connection (TCP RST) without answering."""

    async def run(responder: Responder) -> None:
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        responder.reset_connection()

    return run


async def hang(responder: Responder) -> None:
    """Never answer; the exchange ends when the client gives up (counted as cancelled)."""
    await asyncio.get_running_loop().create_future()
