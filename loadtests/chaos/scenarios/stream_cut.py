"""An upstream that cuts its stream mid-way: the client must see an error, never a
clean finish (the failure Portkey users met as a truncated answer with a 200).

The real `openai` and `ollama` clients stream through the gateway while the backend
closes after a few chunks (`x-sim-cut-after`), on every protocol path: SSE relayed,
NDJSON relayed, and both translations. Each client must raise. Streams without a
fault run alongside and must finish cleanly, so a gateway that broke every stream
would fail here too. A backend that resets the connection before answering must give
an error status, not an empty 200.
"""

from __future__ import annotations

import random

import httpx
import ollama
import openai
from openai.types.chat import ChatCompletionMessageParam

from loadtests.chaos.scenario import Context, Result, Scenario

CRITERION = "every cut stream raises in the client; every clean stream finishes"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "stream please"}]
# (route, the protocol its clients speak); the routes' backends are set in `run`.
PATHS = (
    ("sse", "openai"),
    ("sse-from-ndjson", "openai"),
    ("ndjson", "ollama"),
    ("ndjson-from-sse", "ollama"),
)


def _route(name: str, protocol: str, endpoint: str, backend: str = "") -> str:
    extra = f", backend_protocol: {backend}" if backend else ""
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {name}
protocol: {protocol}
variants:
  - {{name: main, endpoints: ["{endpoint}"]{extra}}}
retries: {{attempts: 2, on: [connect-error, reset, 502, 503]}}
"""


async def _openai_stream(client: openai.AsyncOpenAI, model: str, headers: dict[str, str]) -> str:
    """'clean' if the stream ended with a finish_reason and [DONE], else why not."""
    try:
        stream = await client.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, extra_headers=headers
        )
        finished = False
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason is not None:
                finished = True
        return "clean" if finished else "ended without finish_reason"
    except (openai.APIError, httpx.HTTPError) as exc:
        return f"raised {type(exc).__name__}"


async def _ollama_stream(client: ollama.AsyncClient, model: str) -> str:
    """'clean' if the stream's last line said done, else why not."""
    try:
        done = False
        async for part in await client.chat(model=model, messages=MESSAGES, stream=True):
            done = done or bool(part.done)
        return "clean" if done else "ended without done"
    except (ollama.ResponseError, httpx.HTTPError) as exc:
        return f"raised {type(exc).__name__}"


async def run(ctx: Context) -> Result:
    per_path = ctx.scale.pick(50, 8)
    oa = await ctx.launcher.simulator("cut-openai", "--tokens", "12")
    ol = await ctx.launcher.simulator("cut-ollama", "--tokens", "12", kind="ollama")
    gw = await ctx.launcher.gateway(
        {
            "sse.yaml": _route("sse", "openai", oa.url),
            "ndjson.yaml": _route("ndjson", "ollama", ol.url),
            "sse-from-ndjson.yaml": _route("sse-from-ndjson", "openai", ol.url, "ollama"),
            "ndjson-from-sse.yaml": _route("ndjson-from-sse", "ollama", oa.url, "openai"),
        }
    )
    rng = random.Random(7)
    counts = {"cut": 0, "cut_raised": 0, "clean": 0, "clean_finished": 0, "reset": 0}
    wrong: dict[str, int] = {}
    oai = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="chaos", max_retries=0)
    try:
        for i in range(per_path):
            cut = {"x-sim-cut-after": str(rng.randint(0, 6))}
            for path, front in PATHS:
                for faulted in (True, False):
                    headers = cut if faulted else {}
                    if front == "openai":
                        got = await _openai_stream(oai, path, headers)
                    else:
                        # The ollama client takes headers per client, not per call.
                        async with ollama.AsyncClient(host=gw.url, headers=headers) as olc:
                            got = await _ollama_stream(olc, path)
                    key = "cut" if faulted else "clean"
                    counts[key] += 1
                    ok = got.startswith("raised") if faulted else got == "clean"
                    counts["cut_raised" if faulted else "clean_finished"] += ok
                    if not ok:
                        label = f"{path} {key}: {got}"
                        wrong[label] = wrong.get(label, 0) + 1
            if i % 4 == 0:  # a reset before any byte: an error status, never an empty 200
                counts["reset"] += 1
                got = await _openai_stream(oai, "sse", {"x-sim-reset": "1"})
                if not got.startswith("raised"):
                    wrong[f"sse reset: {got}"] = wrong.get(f"sse reset: {got}", 0) + 1
    finally:
        await oai.close()
    requests = counts["cut"] + counts["clean"] + counts["reset"]
    failures = sum(wrong.values())
    ctx.say(f"stream-cut: {counts}, wrong: {wrong}")
    return Result(
        "stream-cut",
        requests,
        failures,
        CRITERION,
        passed=failures == 0 and counts["cut"] > 0 and counts["clean"] > 0,
        details={**counts, "wrong": wrong},
    )


SCENARIO = Scenario("stream-cut", CRITERION, run)
