"""Rollouts and experiments in the admin API (behind the bearer token).

- `GET /admin/rollouts`: every route's rollout: state, step, history, last analysis,
  where the state is kept, whether this process is the writer, and where the gates'
  statistics come from (`statistics`; each analysis names the read it judged, `source`).
- `GET /admin/rollouts/{route}`: one of them.
- `POST /admin/rollouts/{route}/pause|resume|abort`: operator commands. On the writer
  they apply at once (200); on another replica they are left in the store for the
  writer (202); an impossible transition (abort a promoted rollout) is 409.
- `GET /admin/experiments`: routes that take outcome feedback.
- `GET /admin/experiments/{route}`: per variant counts and each variant against the
  baseline: conversion rates, lift, z-test p-value and confidence interval; rewards
  with Welch's t-test. The counts come from the statistics source (`source` in the
  answer); a 503 says why when it does not answer.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.admin.endpoints import Handler
from gateway.admin.views import unavailable
from gateway.controlplane.registry.client import RegistryError
from gateway.rollout.controller import RolloutController
from gateway.rollout.stats import warm_up
from gateway.rollout.store import ACTIONS
from gateway.stats.sources import StatsUnavailable


def rollout_handlers(controller: RolloutController) -> dict[str, Handler]:
    """The handlers of the rollout and experiment endpoints (`gateway.admin.endpoints`)."""

    async def rollouts(_: Request) -> Response:
        return JSONResponse(controller.status())

    async def rollout(request: Request) -> Response:
        route = request.path_params["route"]
        found = controller.status_of(route)
        if found is None:
            return JSONResponse(
                {"error": f"route {route!r} has no rollout (no `rollout` block in its policy)"},
                status_code=404,
            )
        return JSONResponse(found)

    async def command(request: Request) -> Response:
        route, action = request.path_params["route"], request.path_params["action"]
        if action not in ACTIONS:
            return JSONResponse(
                {"error": f"unknown action {action!r}: use {', '.join(ACTIONS)}"}, status_code=404
            )
        by = request.headers.get("x-switchyard-operator", "") or "admin API"
        try:
            status, body = await controller.command(route, action, by[:64])
        except RegistryError as exc:
            return JSONResponse(
                {"error": f"the registry did not take the change: {exc}"}, status_code=502
            )
        return JSONResponse(body, status_code=status)

    async def experiments(_: Request) -> Response:
        return JSONResponse({"routes": controller.experiment_routes()})

    async def experiment(request: Request) -> Response:
        route = request.path_params["route"]
        await asyncio.to_thread(warm_up)  # scipy's first import: not on the event loop
        try:
            found = await controller.experiment(route)
        except StatsUnavailable as exc:
            return unavailable(exc)
        if found is None:
            return JSONResponse(
                {
                    "error": f"route {route!r} takes no feedback (no `experiment` or "
                    "`rollout` block in its policy)"
                },
                status_code=404,
            )
        return JSONResponse(found)

    return {
        "rollouts": rollouts,
        "rollout_command": command,
        "rollout": rollout,
        "experiments": experiments,
        "experiment": experiment,
    }
