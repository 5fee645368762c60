"""`serve --workers 2`: one port, one admin API, metrics merged, reloads fanned out."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.admin.endpoints import ENDPOINTS
from tests.procs import GatewayProc, Simulator, spawn, start_kserve


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_two_workers_share_port_and_metrics(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    gw = gateway(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants: [{{name: main, endpoints: ["{sims[0].url}"]}}]
""",
        extra=("--workers", "2"),
    )
    workers = children(gw.proc.popen.pid)
    assert len(workers) == 2
    for _ in range(60):  # a new connection each time: the kernel spreads them
        r = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200
    assert gw.metric("switchyard_requests_total", route="r", status_class="2xx") == 60
    assert gw.metric("switchyard_workers") == 2
    reload = httpx.post(f"{gw.admin}/admin/reload").json()
    assert [w["status"] for w in reload["workers"]] == [200, 200]

    # A worker that dies is replaced; the port keeps serving meanwhile.
    os.kill(workers[0], signal.SIGKILL)
    ok = 0
    for _ in range(30):
        r = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": "x"}]},
        )
        ok += r.status_code == 200
    assert ok == 30
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        len(children(gw.proc.popen.pid)) < 2 or httpx.get(f"{gw.admin}/readyz").status_code != 200
    ):
        time.sleep(0.2)
    assert len(children(gw.proc.popen.pid)) == 2
    assert httpx.get(f"{gw.admin}/readyz").status_code == 200
    assert "worker 0 exited" in gw.proc.output()
    assert gw.proc.stop() == 0


def test_two_workers_share_one_grpc_port(gateway: Callable[..., GatewayProc]) -> None:
    """`--grpc-port 0` with workers: the supervisor picks one port that every worker binds."""
    sim = start_kserve("w")
    try:
        port = sim.grpc.rsplit(":", 1)[1]
        gw = gateway(
            f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: fraud-detector
protocol: kserve-v2
variants: [{{name: main, endpoints: ["{sim.url}"], grpc_port: {port}}}]
""",
            extra=("--workers", "2", "--grpc-port", "0"),
        )
        assert gw.grpc, "the supervisor's listening line names no gRPC address"
        features = np.ones((1, 4), np.float32)
        for _ in range(20):  # a new channel each time: the kernel spreads them
            with grpcclient.InferenceServerClient(gw.grpc) as client:
                tensor = grpcclient.InferInput("features", [1, 4], "FP32")
                tensor.set_data_from_numpy(features)
                result = client.infer("fraud-detector", [tensor])
                assert result.as_numpy("probability").shape == (1, 1)
        assert gw.metric("switchyard_requests_total", route="fraud-detector") == 20
    finally:
        sim.proc.stop()


def test_one_process_and_two_workers_answer_the_same_admin_paths(
    gateway: Callable[..., GatewayProc], sims: tuple[Simulator, Simulator]
) -> None:
    """Every endpoint of the admin table, on both modes: the same status without the
    token, with it, and for a path the table does not have."""
    policy = f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: r
variants: [{{name: main, endpoints: ["{sims[0].url}"]}}]
"""
    token = "admin-paths"
    probes = [
        (method, e.path.replace("{route:path}", "r").replace("{action:str}", "pause"))
        for e in ENDPOINTS
        for method in e.methods
    ]
    probes += [("GET", "/admin/nope"), ("PUT", "/admin/reload"), ("GET", "/admin/shadow/nope")]
    answers: dict[str, dict[tuple[str, str, bool], int]] = {}
    for workers in ("1", "2"):
        gw = gateway(policy, extra=("--workers", workers, "--admin-token", token))
        found = answers[workers] = {}
        with httpx.Client(base_url=gw.admin, timeout=30) as admin:
            deadline = time.monotonic() + 60
            while admin.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            for method, path in probes:
                body = {"route": "r"} if path == "/admin/explain" else None
                for authed in (False, True):
                    headers = {"authorization": f"Bearer {token}"} if authed else {}
                    reply = admin.request(method, path, json=body, headers=headers)
                    found[method, path, authed] = reply.status_code
        assert gw.proc.stop() == 0
    assert answers["1"] == answers["2"]
    # And they are the expected answers, not the same failure twice.
    assert answers["2"]["POST", "/admin/reload", True] == 200
    assert answers["2"]["GET", "/admin/routes", False] == 401
    assert answers["2"]["GET", "/metrics", False] == 200
    assert answers["2"]["GET", "/admin/nope", True] == 404


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_admin_port_in_use_stops_either_mode_cleanly(tmp_path: Path, workers: str) -> None:
    """Exit 2 with the reason, and no worker left behind (uvicorn's own answer to a
    port in use is sys.exit, which once hung the supervisor and its workers)."""
    (tmp_path / "r.yaml").write_text(
        "apiVersion: switchyard/v1\nkind: RoutingPolicy\nroute: r\n"
        'variants: [{name: main, endpoints: ["http://127.0.0.1:9"]}]\n'
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ["serve", "--port", "0", "--grpc-port", "-1", "--admin-port", port]
        proc = spawn([*args, "--policies", str(tmp_path), "--workers", workers])
        code = proc.popen.wait(60)
    proc.stop()
    assert code == 2, proc.output()
    assert f"admin API could not start on 127.0.0.1:{port}" in proc.output()
    assert "Traceback" not in proc.output()
