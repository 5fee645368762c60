"""What a drift episode does: save the window, start a Kubeflow run, call a webhook.

Run by the drift worker once per episode (see `episodes.py`), in this order, because
each later action passes on what the earlier ones produced: the window's URI goes into
the Kubeflow run's parameters and the webhook event. Every outcome is logged and
counted; an action that failed is tried again at the next evaluation of the episode.

A retraining run is never started without its data: while the window is not saved,
the Kubeflow action is `skipped` (counted, logged with the reason) and tried again,
with the window, at the next evaluation. The webhook, a notification, goes out anyway,
its `window_uri` null and `window_error` saying why.

The retrain triggers (`triggers.py`: schedule, concept drift, data threshold, accuracy
SLO) run the same actions once per episode of theirs, with the labeled window as the
saved window; `ActionContext.reason` names the trigger in the Kubeflow run's name and
parameters (`reason`) and in the webhook event (`event: retrain`, `reason`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd

from gateway.controlplane.policy.driftspec import DriftSpec, WebhookSpec, is_remote, local_path
from gateway.drift.episodes import Episode
from gateway.drift.kubeflow import CallFailed, KubeflowClient, Sleep, check, with_retries
from gateway.drift.status import safe_name

log = logging.getLogger("switchyard.drift")
ACTIONS = ("save_window", "kubeflow", "webhook")


@dataclass(slots=True)
class ActionContext:
    """Everything the actions of one route need besides the episode."""

    route: str
    spec: DriftSpec
    base: Path  # the policy file's folder
    roots: Sequence[str]
    windows_dir: Path  # default place for saved windows
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    transport: httpx.AsyncBaseTransport | None = None  # test seam for Kubeflow/webhook
    sleep: Sleep = asyncio.sleep
    # Why the actions run: "drift" (data drift), or a retrain trigger's reason
    # (concept_drift, schedule, labeled_samples, accuracy; see `triggers.py`).
    reason: str = "drift"


def configured(spec: DriftSpec) -> list[str]:
    """The actions a drift block asks for (saving the window always)."""
    on = spec.on_drift
    wanted = ["save_window"]
    if on.kubeflow is not None:
        wanted.append("kubeflow")
    if on.webhook is not None:
        wanted.append("webhook")
    return wanted


def save_window(ctx: ActionContext, frame: pd.DataFrame, version: str, episode: Episode) -> str:
    """Write the window as Parquet; returns its URI (file:// for local folders)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(episode.started_at))
    relative = f"{safe_name(ctx.route)}/{safe_name(version)}/{stamp}-{episode.id}.parquet"
    location = ctx.spec.on_drift.save_to
    if location is not None and is_remote(location):
        from pyarrow import Table, fs, parquet

        root = location.rstrip("/")
        filesystem, base_path = fs.FileSystem.from_uri(root)
        target = f"{base_path}/{relative}"
        filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(target) as out:
            parquet.write_table(Table.from_pandas(frame, preserve_index=False), out)
        return f"{root}/{relative}"
    folder = ctx.windows_dir if location is None else local_path(location, ctx.base, ctx.roots)
    # Absolute before it becomes a URI: a relative path has none (and would mean
    # nothing to a pipeline running elsewhere).
    path = (folder / relative).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # a pipeline never reads a half-written window
    return path.as_uri()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The webhook signature header value: HMAC-SHA256 of `TIMESTAMP.BODY`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


async def send_webhook(
    spec: WebhookSpec,
    event: Mapping[str, Any],
    key: str,
    env: Mapping[str, str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """POST the event, signed when a secret is configured; retried with backoff."""
    body = orjson.dumps(event)
    timestamp = str(int(time.time()))
    headers = {
        "content-type": "application/json",
        "x-switchyard-event": str(event.get("event", "drift")),
        "x-switchyard-timestamp": timestamp,
        "idempotency-key": key,  # receivers dedupe retries by it
    }
    if spec.secret_env is not None:
        secret = env.get(spec.secret_env)
        if not secret:
            raise CallFailed(f"environment variable {spec.secret_env} (secret_env) is not set")
        headers["x-switchyard-signature"] = sign(secret, timestamp, body)
    async with httpx.AsyncClient(timeout=spec.retries.timeout, transport=transport) as client:

        async def attempt() -> None:
            check(await client.post(spec.url, content=body, headers=headers), "webhook")

        await with_retries(spec.retries, attempt, sleep)


def drift_event(
    ctx: ActionContext,
    version: str,
    variants: Sequence[str],
    episode: Episode,
    window_error: str | None = None,
) -> dict[str, Any]:
    """The JSON event the webhook receives (and the Kubeflow run's description)."""
    return {
        "event": "drift" if ctx.reason == "drift" else "retrain",
        "reason": ctx.reason,
        "route": ctx.route,
        "model_version": version,
        "variants": sorted(variants),
        "episode": episode.id,
        "started_at": episode.started_at,
        "window_uri": episode.window_uri,
        "window_error": window_error,
        "run_id": episode.run_id,
        "summary": episode.summary,
    }


async def run_actions(
    ctx: ActionContext,
    version: str,
    variants: Sequence[str],
    episode: Episode,
    frame: pd.DataFrame,
    model_name: str,
) -> dict[str, str]:
    """Run the episode's pending actions; returns {action: "ok" | "failed" |
    "skipped"} (skipped: a Kubeflow run waiting for its window, see the module)."""
    outcomes: dict[str, str] = {}
    on = ctx.spec.on_drift
    window_error: str | None = None
    for action in configured(ctx.spec):
        if action in episode.done:
            continue
        detail = ""
        try:
            if action == "save_window":
                try:
                    episode.window_uri = await asyncio.to_thread(
                        save_window, ctx, frame, version, episode
                    )
                except (OSError, ValueError) as exc:
                    window_error = f"{type(exc).__name__}: {exc}"
                    raise
                detail = episode.window_uri
            elif action == "kubeflow" and on.kubeflow is not None:
                if not episode.window_uri:
                    outcomes[action] = "skipped"
                    log.error(
                        "drift %s/%s episode %s: Kubeflow run not started: its window was not "
                        "saved (%s); tried again with the window at the next evaluation",
                        ctx.route,
                        version,
                        episode.id,
                        window_error or "save_window did not succeed",
                    )
                    continue
                detail = await _kubeflow(ctx, version, episode, model_name)
            elif action == "webhook" and on.webhook is not None:
                event = drift_event(ctx, version, variants, episode, window_error)
                await send_webhook(
                    on.webhook,
                    event,
                    f"{episode.id}-webhook",
                    ctx.env,
                    transport=ctx.transport,
                    sleep=ctx.sleep,
                )
                detail = on.webhook.url
        except (CallFailed, OSError, ValueError, httpx.HTTPError) as exc:
            outcomes[action] = "failed"
            log.error(
                "drift %s/%s episode %s: %s failed: %s", ctx.route, version, episode.id, action, exc
            )
            continue
        episode.done.append(action)
        outcomes[action] = "ok"
        log.info(
            "drift %s/%s episode %s: %s ok (%s)", ctx.route, version, episode.id, action, detail
        )
    return outcomes


async def _kubeflow(ctx: ActionContext, version: str, episode: Episode, model_name: str) -> str:
    spec = ctx.spec.on_drift.kubeflow
    assert spec is not None
    client = KubeflowClient(spec, ctx.env, transport=ctx.transport, sleep=ctx.sleep)
    try:
        kind = ctx.reason.replace("_", "-")
        name = f"switchyard-{kind}-{ctx.route}-{version or 'unversioned'}-{episode.id}"
        parameters = {
            "model_name": model_name,
            "model_version": version,
            "window_uri": episode.window_uri,  # never empty: see run_actions
            "reason": ctx.reason,
            # The episode's summary under one name whatever the reason, so one pipeline
            # signature takes every trigger's runs.
            "drift_summary": orjson.dumps(episode.summary).decode(),
        }
        if ctx.reason == "drift":
            description = (
                f"Switchyard drift episode {episode.id} on route {ctx.route}, model version "
                f"{version or '-'}: {len(episode.summary.get('drifted_columns', []))} "
                f"column(s) drifted (share {episode.summary.get('share')})."
            )
        else:
            description = (
                f"Switchyard retrain trigger {ctx.reason}, episode {episode.id} on route "
                f"{ctx.route}, model version {version or '-'}: "
                f"{orjson.dumps(episode.summary).decode()}"
            )
        run = await client.create_run(name, parameters, description)
    finally:
        await client.aclose()
    episode.run_id = run.run_id
    return f"run {run.run_id}" + ("" if run.created else " (existed already)")
