"""Drift demo: normal traffic, then shifted traffic, and watch the gateway notice.

Against `switchyard demo` (route `support`, fake Kubeflow on :9103):

    .venv/bin/python loadtests/drift_demo.py                # baseline, then shifted
    .venv/bin/python loadtests/drift_demo.py --phase shifted --requests 600

It sends chat requests through the gateway, polls `GET /admin/drift/support` until the
worker has evaluated the window, prints the drift share and the drifted columns and
where every sample went (sent to the worker, received into its window, dropped by
reason), and lists the Kubeflow runs the drift created with the window each retrains
on. `--write-reference FILE` writes the demo's reference data instead: baseline
requests through the gateway's own text descriptors.
Every loop is bounded (requests, seconds); it only talks to the URLs given.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.controlplane.policy.driftspec import TEXT_DESCRIPTORS
from gateway.drift.features import describe_text
from gateway.simulate.prompts import baseline_request, shifted_request


async def send(
    gateway: str, route: str, phase: str, count: int, concurrency: int, seed: int
) -> tuple[int, int]:
    """Send `count` requests of one phase; returns (ok, failed)."""
    rng = random.Random(seed)
    make = shifted_request if phase == "shifted" else baseline_request
    bodies = [make(rng, route) for _ in range(count)]
    ok = failed = 0
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as client:

        async def one(body: dict[str, Any], user: int) -> None:
            nonlocal ok, failed
            async with limit:
                reply = await client.post(
                    "/v1/chat/completions", json=body, headers={"x-user-id": f"user-{user}"}
                )
                if reply.status_code == 200:
                    ok += 1
                else:
                    failed += 1

        await asyncio.gather(*(one(b, i) for i, b in enumerate(bodies)))
    return ok, failed


def watch(admin: str, route: str, since: float, timeout: float, want_drift: bool | None) -> None:
    """Poll the admin API until an evaluation newer than `since` (and the wanted verdict)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=admin, timeout=5) as client:
        while time.monotonic() < deadline:
            reply = client.get(f"/admin/drift/{route}")
            if reply.status_code == 200:
                for v in reply.json()["versions"]:
                    done = (v.get("evaluated_at") or 0) > since
                    if done and (want_drift is None or v.get("drifted") == want_drift):
                        drifted = [c for c, r in v["columns"].items() if r["drifted"]]
                        print(
                            f"  version {v['version'] or '-'}: window {v['window']} rows, "
                            f"drift share {v['share']:.2f} -> "
                            f"{'DRIFT' if v['drifted'] else 'no drift'}; drifted columns: "
                            f"{', '.join(drifted) or 'none'} "
                            f"(evaluated in {v['duration_s']:.2f}s)"
                        )
                        if v.get("report_url"):
                            print(f"  report: {admin}{v['report_url']}")
                        return
            time.sleep(1.0)
    print(f"  no matching evaluation within {timeout:.0f}s (see {admin}/admin/drift/{route})")


def metric_samples(text: str, name: str, route: str) -> dict[str, float]:
    """Values of one metric for `route`, by reason (or "" without one)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("route") in (route, ""):
                reason = sample.labels.get("reason", "")
                found[reason] = found.get(reason, 0.0) + sample.value
    return found


def show_samples(admin: str, route: str) -> None:
    """Where the route's samples went: sent == received + dropped once the worker has
    caught up (it publishes once a second)."""
    try:
        text = httpx.get(f"{admin}/metrics", timeout=5).text
    except httpx.HTTPError as exc:
        print(f"  metrics at {admin} not reachable: {exc}")
        return
    sent = sum(metric_samples(text, "switchyard_drift_samples_total", route).values())
    received = sum(metric_samples(text, "switchyard_drift_samples_received_total", route).values())
    dropped = metric_samples(text, "switchyard_drift_samples_dropped_total", route)
    for reason, n in metric_samples(
        text, "switchyard_drift_worker_samples_dropped_total", route
    ).items():
        dropped[f"worker {reason}"] = dropped.get(f"worker {reason}", 0.0) + n
    reasons = ", ".join(f"{r}: {n:.0f}" for r, n in sorted(dropped.items()) if n) or "none"
    print(
        f"  samples: sent {sent:.0f}, received by the worker {received:.0f}, "
        f"dropped {sum(dropped.values()):.0f} ({reasons})"
    )


def show_runs(kubeflow: str) -> None:
    try:
        runs = httpx.get(f"{kubeflow}/apis/v2beta1/runs", timeout=5).json().get("runs", [])
    except httpx.HTTPError as exc:
        print(f"  kubeflow at {kubeflow} not reachable: {exc}")
        return
    print(f"  Kubeflow runs: {len(runs)}")
    for run in runs:
        params = run.get("runtime_config", {}).get("parameters", {})
        print(
            f"   - {run['display_name']} (run {run['run_id']}): model {params.get('model_name')} "
            f"version {params.get('model_version')}, window {params.get('window_uri')}"
        )


def write_reference(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(TEXT_DESCRIPTORS))
        writer.writeheader()
        for _ in range(rows):
            row = describe_text(baseline_request(rng, "support"))
            writer.writerow({k: "" if v is None else round(float(v), 6) for k, v in row.items()})
    print(f"wrote {rows} reference rows to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--admin", default="http://127.0.0.1:8081")
    parser.add_argument("--kubeflow", default="http://127.0.0.1:9103")
    parser.add_argument("--route", default="support")
    parser.add_argument("--phase", choices=["both", "baseline", "shifted"], default="both")
    parser.add_argument("--requests", type=int, default=400, help="per phase (default 400)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait per phase")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write-reference", type=Path, metavar="FILE")
    args = parser.parse_args()
    if args.write_reference is not None:
        write_reference(args.write_reference, args.requests, args.seed)
        return 0
    phases = ["baseline", "shifted"] if args.phase == "both" else [args.phase]
    for i, phase in enumerate(phases):
        started = time.time()
        print(f"{phase}: sending {args.requests} requests to route {args.route}")
        ok, failed = asyncio.run(
            send(args.gateway, args.route, phase, args.requests, args.concurrency, args.seed + i)
        )
        print(f"  {ok} ok, {failed} failed; waiting for the drift worker's next evaluation")
        watch(args.admin, args.route, started, args.timeout, phase == "shifted")
        show_samples(args.admin, args.route)
    show_runs(args.kubeflow)
    return 0


if __name__ == "__main__":
    sys.exit(main())
