"""A registry alias moved N times under load: no request may fail, and traffic follows
every move (the new version answers within the poll interval and a margin).

A real MLflow tracking server (`gateway.quickstart.mlflow_server`, SQLite in the run's folder) holds
one model with two versions, each tagged with its serving endpoint; the gateway routes
to `models:/NAME@champion` and polls the alias. Skipped when MLflow is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import time

from gateway.controlplane.registry.binding import ENDPOINT_TAG, PROTOCOL_TAG
from gateway.controlplane.registry.client import MlflowRegistry, RegistryConfig
from gateway.quickstart.mlflow_server import LocalMlflow
from loadtests.chaos.load import Load, Outcome, chat
from loadtests.chaos.procs import free_port
from loadtests.chaos.scenario import Context, Result, Scenario

CRITERION = "every alias move followed by traffic; 0 failed requests"
POLL = 0.5
MODEL = "chaos-chat"


def _policy() -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: chat
variants:
  - name: champion
    target: models:/{MODEL}@champion
retries: {{attempts: 2, on: [connect-error, reset, 502, 503]}}
"""


async def run(ctx: Context) -> Result:
    moves = ctx.scale.pick(20, 5)
    a = await ctx.launcher.simulator("alias-a", "--tokens", "8")
    b = await ctx.launcher.simulator("alias-b", "--tokens", "8")
    server = LocalMlflow(ctx.launcher.folder("mlflow"), port=free_port())
    server.start()
    try:
        await asyncio.to_thread(server.wait_ready, 120.0, io.StringIO())
        ctx.say(f"alias: MLflow ready at {server.uri}")
        return await _moves(ctx, server.uri, a.url, b.url, moves)
    finally:
        await asyncio.to_thread(server.stop)


async def _moves(ctx: Context, uri: str, a: str, b: str, moves: int) -> Result:
    async with MlflowRegistry(RegistryConfig(uri, timeout=10)) as registry:
        await registry.create_model(MODEL, "chaos runner: alias moves under load")
        versions = []
        for url in (a, b):
            tags = {ENDPOINT_TAG: url, PROTOCOL_TAG: "openai"}
            created = await registry.create_version(
                MODEL, f"s3://chaos/{MODEL}/{url[-5:]}", tags=tags
            )
            versions.append(created.version)
        await registry.set_alias(MODEL, "champion", versions[0])
        gw = await ctx.launcher.gateway(
            {"chat.yaml": _policy()},
            "--registry-uri",
            uri,
            "--registry-poll-interval",
            str(POLL),
        )
        latest: dict[str, float] = {}

        def seen(outcome: Outcome) -> None:
            if outcome.ok and outcome.version:
                latest[outcome.version] = time.monotonic()

        followed = 0
        switch_times: list[float] = []
        mix = [chat("chat"), chat("chat", stream=True)]
        async with Load(
            gw.url, mix, workers=4, limit=moves * 1000, seconds=600, on_outcome=seen
        ) as load:
            await load.wait_for(20)
            for i in range(moves):
                target = versions[(i + 1) % 2]
                moved = time.monotonic()
                await registry.set_alias(MODEL, "champion", target)
                deadline = moved + POLL + 10
                while latest.get(target, 0.0) < moved and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                if latest.get(target, 0.0) >= moved:
                    followed += 1
                    switch_times.append(latest[target] - moved)
                # Stay a little after the switch, so the old version is truly gone.
                await load.wait_for(load.tally.requests + 20, timeout=10)
            tally = await load.stop()
    worst = max(switch_times, default=0.0)
    ctx.say(f"alias: {followed}/{moves} moves followed, worst switch-over {worst:.2f}s")
    return Result(
        "alias-move",
        tally.requests,
        tally.failures,
        CRITERION,
        passed=followed == moves and tally.failures == 0,
        details={
            "moves": moves,
            "followed": followed,
            "worst_switch_over_s": round(worst, 3),
            "poll_interval_s": POLL,
            **tally.summary(),
        },
    )


def _unavailable() -> str | None:
    if importlib.util.find_spec("mlflow") is None:
        return "MLflow is not installed (pip install -e '.[registry]')"
    return None


SCENARIO = Scenario("alias-move", CRITERION, run, _unavailable, in_quick=False)
