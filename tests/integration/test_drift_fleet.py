"""One drift worker for a fleet, with real processes on loopback: a standalone
`switchyard drift-worker --listen udp://... --http ...`, three gateways of two workers
each sending to it, the fake Kubeflow Pipelines API, an OpenAI simulator.

The worker and the gateways share a fleet secret: a forged config sent to the worker's
UDP port (unsigned, or tagged under another secret) is dropped and counted, and does
not move the route's Kubeflow calls. Shifted inputs spread over every replica make
exactly one episode and one Kubeflow run (not one per replica); calm traffic on another
route makes none; every gateway's admin API shows the same episode, read from the
worker over HTTP. Then the worker is killed and started again under traffic: no request
fails, the admin API says 503 while it is gone, every sample sent is accounted for
(received, or counted lost from the senders' numbers) and the new worker evaluates
again, still without a second run.
"""

from __future__ import annotations

import csv
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.controlplane.policy.driftspec import TEXT_DESCRIPTORS
from gateway.drift.channel import ChannelKey, Stream, encode_config
from gateway.drift.features import describe_text
from gateway.simulate.prompts import baseline_request, shifted_request
from tests.procs import GatewayProc, Proc, Simulator, spawn, start_gateway, start_simulator

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

_LISTENING = re.compile(r"switchyard drift-worker listening on udp://\S+:(\d+) http (http://\S+)")
ROUTES = ("support", "calm")  # shifted traffic on the first, baseline on the second
FLEET = {"SWITCHYARD_FLEET_SECRET": "the-fleet-secret-of-this-test"}  # worker, gateways


def policy(route: str, backend: str, kubeflow: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
variants:
  - {{name: champion, target: "models:/{route}/1"}}
backends:
  {route}/1: {{endpoints: ["{backend}"]}}
drift:
  reference: reference/prompts.csv
  window: {{size: 120, every: 1s, min_samples: 100}}
  cooldown: 1h
  on_drift:
    kubeflow:
      endpoint: {kubeflow}
      pipeline_id: {route}-retraining
      pipeline_version_id: v1
      token_env: KFP_TOKEN
"""


@dataclass
class Worker:
    proc: Proc
    udp: int
    url: str

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/status", timeout=5).json()
        return result


def start_worker(drift_dir: Path, udp: int = 0, http: int = 0) -> Worker:
    proc = spawn(
        [
            "drift-worker",
            "--listen",
            f"udp://127.0.0.1:{udp}",
            "--http",
            f"127.0.0.1:{http}",
            "--drift-dir",
            str(drift_dir),
        ],
        env={"KFP_TOKEN": "s3cret", **FLEET},  # only the worker holds the Kubeflow token
    )
    try:
        found = proc.wait_for(_LISTENING, 60)
    except Exception:
        proc.stop()
        raise
    return Worker(proc, int(found.group(1)), found.group(2))


def wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something true (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def version(status: dict[str, Any], route: str) -> dict[str, Any]:
    found: dict[str, Any] = status["routes"][route]["versions"].get("1", {})
    return found


def kubeflow_runs(kfp: Simulator) -> list[dict[str, Any]]:
    seen = httpx.get(f"{kfp.url}/kfp-sim/requests", timeout=5).json()["requests"]
    return [r for r in seen if r["method"] == "POST" and r["path"] == "/apis/v2beta1/runs"]


def send(gateways: list[GatewayProc], route: str, count: int, seed: int) -> None:
    """`count` requests spread over the replicas in turn, each on a new connection (so
    the kernel spreads them over each replica's workers too); all must succeed."""
    make = shifted_request if route == "support" else baseline_request
    rng = random.Random(seed)
    for i in range(count):
        gw = gateways[i % len(gateways)]
        reply = httpx.post(f"{gw.url}/v1/chat/completions", json=make(rng, route), timeout=10)
        assert reply.status_code == 200, reply.text


class Traffic(threading.Thread):
    """Shifted requests over every replica until stopped; records every outcome."""

    def __init__(self, gateways: list[GatewayProc]) -> None:
        super().__init__(daemon=True)
        self.gateways = gateways
        self.stopping = threading.Event()
        self.ok = 0
        self.failed: list[str] = []

    def run(self) -> None:
        rng = random.Random(11)
        i = 0
        while not self.stopping.is_set() and i < 20_000:
            gw = self.gateways[i % len(self.gateways)]
            i += 1
            try:
                reply = httpx.post(
                    f"{gw.url}/v1/chat/completions",
                    json=shifted_request(rng, "support"),
                    timeout=10,
                )
            except httpx.HTTPError as exc:
                self.failed.append(repr(exc))
                continue
            if reply.status_code == 200:
                self.ok += 1
            else:
                self.failed.append(f"{reply.status_code} {reply.text[:200]}")
            time.sleep(0.005)  # a steady flow, leaving the two cores to the processes

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


@pytest.fixture
def fleet(
    tmp_path: Path, sims: tuple[Simulator, Simulator]
) -> Iterator[tuple[Worker, list[GatewayProc], Simulator, Path]]:
    folder = tmp_path / "policies"
    (folder / "reference").mkdir(parents=True)
    rng = random.Random(1)
    with (folder / "reference" / "prompts.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(TEXT_DESCRIPTORS))
        writer.writeheader()
        for _ in range(600):
            writer.writerow(describe_text(baseline_request(rng, "x")))
    kfp = start_simulator("kfp", "--token", "s3cret", kind="kubeflow")
    workers: list[Worker] = []
    gateways: list[GatewayProc] = []
    try:
        for route in ROUTES:
            (folder / f"{route}.yaml").write_text(policy(route, sims[0].url, kfp.url))
        drift_dir = tmp_path / "drift-worker"
        workers.append(start_worker(drift_dir))
        worker = workers[0]
        for i in range(3):
            gateways.append(
                start_gateway(
                    folder,
                    "--workers",
                    "2",
                    "--drift-worker-address",
                    f"udp://127.0.0.1:{worker.udp}",
                    "--drift-status-url",
                    worker.url,
                    "--drift-dir",
                    str(tmp_path / f"gateway-{i}"),  # its own: nothing is read from here
                    env=FLEET,
                )
            )
        # Every gateway process (3 x 2) sends its config; the worker merges them into
        # the two routes once.
        wait(
            lambda: (
                worker.status()["senders"]["live"] == 6
                and set(worker.status()["routes"]) == set(ROUTES)
            ),
            30,
            "six gateway processes configure the worker",
        )
        yield worker, gateways, kfp, drift_dir
    finally:
        for gw in gateways:
            gw.proc.stop()
        for w in workers:
            w.proc.stop()
        kfp.proc.stop()


def test_one_worker_one_episode_one_run_for_the_fleet_and_a_restart_loses_nothing_uncounted(
    fleet: tuple[Worker, list[GatewayProc], Simulator, Path],
) -> None:
    worker, gateways, kfp, drift_dir = fleet
    forged_configs_are_dropped(worker)

    # Shifted inputs on one route, calm ones on another, spread over all replicas.
    send(gateways, "calm", 130, seed=2)
    send(gateways, "support", 130, seed=3)
    status = wait(
        lambda: (
            (s := worker.status())
            and (version(s, "support").get("episode") or {}).get("run_id")
            and version(s, "calm").get("evaluated_at")
            and s
        ),
        60,
        "drift on support (with its Kubeflow run), an evaluation of calm",
    )
    # One window fed by every gateway process: all 130 rows of each route in it (the
    # evaluation may come before the last batch of a slow sender lands: wait for it).
    status = wait(
        lambda: (
            (s := worker.status())
            and version(s, "support").get("received") == 130
            and version(s, "calm").get("received") == 130
            and s
        ),
        30,
        "every row of both routes at the worker",
    )
    support, calm = version(status, "support"), version(status, "calm")
    assert support["drifted"] is True and calm["drifted"] is False
    assert calm["episodes"] == 0 and calm["episode"] is None
    episode = support["episode"]

    # Two more evaluations of the drifted window, with new data each time: the episode
    # goes on, and no second run comes (from this worker or any other).
    for seed in (4, 5):
        evaluated = version(worker.status(), "support")["evaluations"]["ok"]
        send(gateways, "support", 15, seed=seed)

        def evaluated_again(before: int = evaluated) -> bool:
            return int(version(worker.status(), "support")["evaluations"]["ok"]) > before

        wait(evaluated_again, 30, "another evaluation")
    status = worker.status()
    assert version(status, "support")["episodes"] == 1
    assert version(status, "support")["episode"]["id"] == episode["id"]
    [run] = kubeflow_runs(kfp)
    assert run["authorization"] == "Bearer s3cret"
    assert run["body"]["pipeline_version_reference"]["pipeline_id"] == "support-retraining"
    assert status["routes"]["support"]["actions"]["kubeflow"] == {"ok": 1}
    assert "kubeflow" not in status["routes"]["calm"]["actions"]

    # Every replica's admin API shows that one episode, read from the worker.
    for gw in gateways:
        view = httpx.get(f"{gw.admin}/admin/drift/support", timeout=10).json()
        [shown] = view["versions"]
        assert shown["episode"]["id"] == episode["id"]
        assert shown["episode"]["run_id"] == episode["run_id"]
        assert view["worker"]["up"] is True and view["worker"]["pid"] == status["pid"]
        calm_view = httpx.get(f"{gw.admin}/admin/drift/calm", timeout=10).json()
        assert calm_view["versions"][0]["episode"] is None
        report = httpx.get(gw.admin + shown["report_url"], timeout=10)
        assert report.status_code == 200 and b"<" in report.content[:200]

    # The worker dies under traffic and comes back.
    traffic = Traffic(gateways)
    traffic.start()
    restarted: Worker | None = None
    try:
        wait(lambda: traffic.ok >= 30, 30, "traffic flows")
        worker.proc.popen.kill()
        worker.proc.popen.wait(10)
        down = httpx.get(f"{gateways[0].admin}/admin/drift/support", timeout=10)
        assert down.status_code == 503 and "unreachable" in down.json()["error"]
        sent_at_kill = traffic.ok
        wait(lambda: traffic.ok >= sent_at_kill + 40, 30, "traffic while the worker is down")
        restarted = start_worker(drift_dir, worker.udp, int(worker.url.rsplit(":", 1)[1]))
        new = restarted
        wait(
            lambda: version(new.status(), "support")["evaluations"]["ok"] >= 1,
            60,
            "the restarted worker evaluates again",
        )
        traffic.stop()
        assert traffic.failed == [] and traffic.ok > sent_at_kill + 40
        accounted(restarted, gateways, kfp, episode["id"], old_pid=status["pid"])
    finally:
        traffic.stop()
        if restarted is not None:
            restarted.proc.stop()


def forged_configs_are_dropped(worker: Worker) -> None:
    """Anything that reaches the worker's UDP port sends a config pointing the route's
    Kubeflow calls (and the token variable) elsewhere: unsigned, and tagged under
    another secret. Neither is taken: counted, and the route keeps the policy's."""
    forged = {
        "route": "support",
        "protocol": "openai",
        "base": "/tmp",
        "drift": {
            "reference": "elsewhere.csv",
            "on_drift": {
                "kubeflow": {
                    "endpoint": "http://127.0.0.1:9",
                    "pipeline_id": "exfiltrate",
                    "pipeline_version_id": "v1",
                    "token_env": "KFP_TOKEN",
                }
            },
        },
    }
    payload = encode_config([forged])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for stream in (Stream(), Stream(key=ChannelKey(b"not-the-fleet-secret-at-all"))):
            sock.sendto(stream.frame(payload), ("127.0.0.1", worker.udp))

    def both_dropped() -> dict[str, Any] | None:
        status = worker.status()
        reasons = {d["reason"]: d["samples"] for d in status["dropped"]}
        counted = reasons.get("unauthenticated") == 1 and reasons.get("bad_tag") == 1
        return status if counted else None

    status: dict[str, Any] = wait(both_dropped, 10, "the forged configs are counted")
    assert status["auth"]["verifies"] is True and status["auth"]["unverified"] == 0
    assert status["routes"]["support"]["reference"] == "reference/prompts.csv"
    assert len(status["configs"]["live"]) == 1 and status["configs"]["conflicts"] == {}


def accounted(
    worker: Worker, gateways: list[GatewayProc], kfp: Simulator, episode: str, old_pid: int
) -> None:
    """What the restarted worker says once the traffic stopped."""

    # Settled: every sender's latest datagram (a config every 2 s) came, and the
    # senders' backlogs are empty.
    def settled() -> dict[str, Any] | None:
        sent = sum(gw.metric("switchyard_drift_samples_total") for gw in gateways)
        status = worker.status()
        ledger = status["senders"]["by_sender"]
        known = sum(s["next"]["rows"] for s in ledger.values())
        return status if known == sent and len(ledger) == 6 else None

    status: dict[str, Any] = wait(settled, 30, "the worker knows of every row sent")
    ledger = status["senders"]["by_sender"]
    # It continued the ledger its predecessor saved: it knows where each sender stood,
    # so what was sent while no worker listened is inside its accounting.
    assert all(s["from"]["rows"] > 0 for s in ledger.values())
    received = sum(
        v["received"] for route in ROUTES for v in status["routes"][route]["versions"].values()
    )
    assert sum(s["rows"]["received"] for s in ledger.values()) == received
    for s in ledger.values():  # each row since then: received, or counted as lost
        assert s["next"]["rows"] - s["from"]["rows"] == s["rows"]["received"] + s["rows"]["lost"]
    # Datagrams went to nobody when the worker died (and those it took in its last
    # second died with it): counted, in the status and in its metrics.
    lost = status["senders"]["datagrams"]["lost"]
    assert lost >= 1
    metrics = httpx.get(f"{worker.url}/metrics", timeout=5).text
    assert f"switchyard_drift_worker_datagrams_lost_total {float(lost)}" in metrics

    # The windows restarted; the episode did not, and made no second run.
    again = version(status, "support")
    assert again["episode"]["id"] == episode and again["episodes"] == 1
    assert len(kubeflow_runs(kfp)) == 1
    for gw in gateways:
        view = httpx.get(f"{gw.admin}/admin/drift/support", timeout=10).json()
        assert view["worker"]["pid"] == status["pid"] != old_pid
        assert view["versions"][0]["episode"]["id"] == episode
