"""gRPC ModelInfer calls are shadowed like HTTP KServe v2 inferences.

Real processes on loopback: `simulate kserve` servers (the primary with gRPC; shadows
HTTP only, since a shadow is addressed by its http:// endpoints), the gateway with its
gRPC front, and `tritonclient.grpc` calling ModelInfer. The shadows' own request
counts show the copies arrived; the gateway's shadow summary, metrics and comparison
log show they were compared with the primary's gRPC replies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.procs import GatewayProc, KServeSimulator, start_gateway, start_kserve

ROUTE = "fraud"


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, KServeSimulator]]:
    started: dict[str, KServeSimulator] = {}
    try:
        started["primary"] = start_kserve("primary", "--model-version", "1")
        # Copies of version 1's requests to version 1 agree; to version 2 they do not.
        started["same"] = start_kserve("same", "--model-version", "1", grpc=False)
        started["next"] = start_kserve("next", "--model-version", "2", grpc=False)
        started["slow"] = start_kserve("slow", "--latency-ms", "3000", grpc=False)
        yield started
    finally:
        for sim in started.values():
            sim.proc.stop()


@pytest.fixture(scope="module")
def gw(
    sims: dict[str, KServeSimulator], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProc, Path]]:
    folder = tmp_path_factory.mktemp("grpc-shadow")
    port = sims["primary"].grpc.rsplit(":", 1)[1]
    model = 'model: fraud-detector, model_version: "1"'
    (folder / "fraud.yaml").write_text(
        f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {ROUTE}
protocol: kserve-v2
variants:
  - {{name: champion, endpoints: ["{sims["primary"].url}"], grpc_port: {port}, {model}}}
shadow:
  - {{name: same, endpoints: ["{sims["same"].url}"], {model}}}
  - {{name: next, endpoints: ["{sims["next"].url}"], model: fraud-detector, model_version: "2"}}
  - {{name: slow, endpoints: ["{sims["slow"].url}"], {model}, max_inflight: 1}}
"""
    )
    log = folder / "shadow.jsonl"
    proc = start_gateway(folder, "--grpc-port", "0", "--shadow-log", str(log))
    yield proc, log
    proc.proc.stop()
    assert "Traceback" not in proc.proc.output(), proc.proc.output()[-3000:]


def rows() -> triton.InferInput:
    tensor = triton.InferInput("features", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[0.5, -1, 2, 0.25], [1, 0, -0.5, 3]], np.float32))
    return tensor


def shadows(gw: GatewayProc) -> dict[str, dict[str, Any]]:
    reply = httpx.get(f"{gw.admin}/admin/shadow/{ROUTE}", timeout=10)
    assert reply.status_code == 200, reply.text
    return {s["shadow"]: s for s in reply.json()["shadows"]}


def infers(sim: KServeSimulator) -> dict[str, int]:
    by_model: dict[str, dict[str, int]] = sim.stats()["by_model"]  # type: ignore[assignment]
    return by_model.get("fraud-detector", {})


def test_model_infer_copies_reach_the_shadows_and_are_compared(
    gw: tuple[GatewayProc, Path], sims: dict[str, KServeSimulator]
) -> None:
    proc, log = gw
    client = triton.InferenceServerClient(proc.grpc)
    try:
        first = client.infer(ROUTE, [rows()], headers={"x-request-id": "grpc-copy-1"})
        # Never awaited: the client has its answer while the slow shadow (3 s) works.
        assert shadows(proc)["slow"]["in_flight"] == 1
        assert first.as_numpy("probability").shape == (2, 1)
        # Asked-for outputs, and calls while the slow copy is still in flight: bounded,
        # so their copies to `slow` are dropped (max_inflight 1), not queued.
        wanted = [triton.InferRequestedOutput("probability")]
        client.infer(ROUTE, [rows()], outputs=wanted)
        # A request the backend refuses: both sides answer 400, which agrees by status.
        bad = triton.InferInput("features", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        with pytest.raises(InferenceServerException):
            client.infer(ROUTE, [bad])
    finally:
        client.close()

    deadline = time.monotonic() + 15
    view = shadows(proc)
    while time.monotonic() < deadline and (
        sum(view["same"]["comparisons"].values()) < 3
        or sum(view["next"]["comparisons"].values()) < 3
        or view["slow"]["in_flight"]
    ):
        time.sleep(0.1)
        view = shadows(proc)
    same, nxt, slow = view["same"], view["next"], view["slow"]
    # Every copy arrived as a KServe v2 HTTP inference at the shadow's model version.
    assert infers(sims["primary"]) == {"1": 3}
    assert infers(sims["same"]) == {"1": 3} and infers(sims["next"]) == {"2": 3}
    assert same["sent"] == 3 and same["requests"] == {"ok": 3}
    # Compared output by output with the primary's gRPC replies; the refusal by status.
    assert same["comparisons"] == {"agree": 3}
    assert same["outputs"] == {"probability": {"agreed": 2, "compared": 2, "rate": 1.0}}
    assert nxt["comparisons"] == {"disagree": 2, "agree": 1}
    assert nxt["outputs"]["probability"]["agreed"] == 0 and nxt["max_abs_error"]["p50"] > 0
    assert slow["dropped"] == {"max_inflight": 2} and slow["comparisons"] == {"agree": 1}
    assert proc.metric("switchyard_shadow_requests_total", route=ROUTE) == 7

    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(lines) < 7:
        lines = [orjson.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        time.sleep(0.2)
    first_copy = next(
        x for x in lines if x["request_id"] == "grpc-copy-1" and x["shadow"] == "same"
    )
    assert first_copy["path"] == "/inference.GRPCInferenceService/ModelInfer"
    assert first_copy["result"] == "agree" and first_copy["kind"] == "tensor"
    assert first_copy["primary_variant"] == "champion"
