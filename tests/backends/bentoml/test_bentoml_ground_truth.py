"""Issue 22's acceptance test: the loop closed with ground truth and schemas, on real parts.

Real MLflow (SQLite) holds `fraud-detector`, its versions logged with signatures
(`infer_signature`) and `switchyard.semver` tags, each version pointing at a real
BentoML fraud service (version 1 the champion, version 2 the challenger). A real
gateway serves the route with a `ground_truth` block, `signature` validation, a `drift`
block with labels and the three retrain triggers, and a progressive rollout of the
challenger gated on `min_accuracy`; a real drift worker process (UDP and HTTP) and the
Kubeflow fake (`switchyard simulate kubeflow`) close the loop. The story:

1. a request that does not fit the routed version's signature is refused, naming it;
2. predictions served, their true labels posted to /v1/feedback by the
   `x-switchyard-feedback-id` ids: right for the champion, wrong for the challenger;
   the rollout rolls the challenger back on accuracy and exactly one Kubeflow run with
   reason `accuracy` starts, whose Parquet window holds exactly the labeled rows
   (joined with the requests' features);
3. the champion's N-th label starts exactly one data-threshold run (N-1 start none);
4. a schedule of every 5 seconds fires on time;
5. `switchyard registry promote` of a MAJOR-incompatible version (semver 2.0.0 against
   the champion's 1.0.0) is refused with the reason; the alias does not move;
6. the gateway's `GET /admin/ground-truth/{route}` and the worker's
   `switchyard_model_*` metrics equal a hand computation on the labels the test sent.
"""

from __future__ import annotations

import calendar
import random
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature

from gateway.quickstart.mlflow_server import LocalMlflow
from tests.backends.bentoml.bentoml_proc import BentoService
from tests.integration.registry.conftest import start_mlflow
from tests.integration.test_drift_triggers import Worker, metric
from tests.integration.test_ground_truth import assert_equal, hand
from tests.integration.test_rollout import rollout_state, wait_rollout
from tests.procs import REPO, GatewayProc, Simulator, poll, start_simulator

pytestmark = [pytest.mark.bentoml, pytest.mark.timeout(300)]

MODEL = "fraud-detector"
ROUTE = "fraud-detector"
# Labels, per version: the challenger's labels (all wrong) trip the accuracy SLO and the
# rollout gate once all CHALLENGER_LABELS are in (their min_samples/min_labels), so the
# SLO's window is exactly those; the champion's LABELED_SAMPLES-th label (FIRST_CHAMPION
# of them before the rollback, the rest after) starts the data-threshold run.
CHALLENGER_LABELS = 12
FIRST_CHAMPION = 10
LABELED_SAMPLES = 30
CHAMPION_WRONG = (15, 25)  # the champion's labels that disagree (accuracy 28/30)
SCHEDULE_S = 5
FEATURES = ("f0", "f1", "f2", "f3")


@dataclass(frozen=True)
class Logged:
    uri: str
    run_id: str
    model_id: str


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflow]:
    server = start_mlflow(tmp_path_factory.mktemp("gt-mlflow"))
    yield server
    server.stop()


def log_models(uri: str) -> dict[str, Logged]:
    """Two tiny pyfunc models logged with signatures: `v1` takes the BentoML service's
    /classify body (`features`: float64 [-1]); `v2` also needs a `merchant` string (a new
    required input: a MAJOR change for its clients)."""
    # Quietly: warnings are errors in this suite, and MLflow warns about type hints, on
    # defining a PythonModel under a "once" filter of its own that no outer filter
    # overrides; record=True keeps that warning here.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        import mlflow.pyfunc

        class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
            """Only its signature matters: BentoML serves the real model."""

            # No type hints: MLflow would read them as a second, conflicting signature.
            def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
                return model_input

    examples = {
        "v1": {"features": np.zeros(4)},
        "v2": {"features": np.zeros(4), "merchant": np.array(["shop"])},
    }
    out: dict[str, Logged] = {}
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        for key, example in examples.items():
            with mlflow.start_run() as run, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=Echo(),
                    signature=infer_signature(example),
                    pip_requirements=[],
                )
            out[key] = Logged(info.model_uri, run.info.run_id, info.model_id)
    finally:
        mlflow.set_tracking_uri(previous)
    return out


def register(client: MlflowClient, model: Logged, service: BentoService, semver: str) -> str:
    """A version of fraud-detector served by `service` (the serving tags say where)."""
    tags = {
        "switchyard.endpoint": service.url,
        "switchyard.protocol": "json",
        "switchyard.semver": semver,
    }
    mv = client.create_model_version(
        MODEL, source=model.uri, run_id=model.run_id, tags=tags, model_id=model.model_id
    )
    return str(mv.version)


def policy(kfp_url: str) -> str:
    features = ", ".join(f"{{name: {n}, path: 'features[{i}]'}}" for i, n in enumerate(FEATURES))
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {ROUTE}
protocol: json
variants:
  - {{name: champion, weight: 90, target: "models:/{MODEL}@champion"}}
  - {{name: challenger, weight: 10, target: "models:/{MODEL}@challenger"}}
signature: {{validate_requests: true, apis: [/classify]}}
ground_truth:
  prediction: label
  score: probability
  positive: fraud
  classes: [legit, fraud]
  max_label_delay: 1h
drift:
  reference: reference.csv
  sample: 1.0
  features: [{features}]
  cooldown: 1h
  labels: {{size: 50, every: 200ms, min_samples: {CHALLENGER_LABELS}, positive: fraud}}
  triggers:
    accuracy: {{min: 0.85, min_samples: {CHALLENGER_LABELS}}}
    labeled_samples: {LABELED_SAMPLES}
    schedule: "*/{SCHEDULE_S} * * * * *"
  on_drift:
    kubeflow: {{endpoint: "{kfp_url}", pipeline_id: fraud-retraining, pipeline_version_id: v1}}
rollout:
  steps: [20, 100]
  analysis: {{interval: 0.5s, min_requests: 10, max_error_rate: 0.05, min_accuracy: 0.85,
              min_labels: {CHALLENGER_LABELS}}}
  on_success: hold
"""


@dataclass
class Served:
    """One prediction as the client saw it."""

    fid: str
    key: str  # the claim key: the drift rows' and the worker's labels' `key`
    variant: str
    version: str
    predicted: str
    score: float
    features: list[float]


def classify(client: httpx.Client, gw: GatewayProc, rng: random.Random) -> Served:
    features = [round(rng.uniform(-2, 2), 3) for _ in range(4)]
    r = client.post(f"{gw.url}/services/{ROUTE}/classify", json={"features": features})
    assert r.status_code == 200, r.text
    body = r.json()
    version = r.headers["x-switchyard-version"]
    assert body["version"] == version  # the registry's version is the service that answered
    fid = r.headers["x-switchyard-feedback-id"]
    assert fid.startswith("fb2."), fid
    return Served(
        fid,
        r.headers["x-request-id"][-22:],
        r.headers["x-switchyard-variant"],
        version,
        body["label"],
        body["probability"],
        features,
    )


def flip(label: str) -> str:
    return "legit" if label == "fraud" else "fraud"


def send_label(client: httpx.Client, gw: GatewayProc, s: Served, truth: str) -> dict[str, Any]:
    r = client.post(f"{gw.url}/v1/feedback", json={"request_id": s.fid, "label": truth})
    assert r.status_code == 200, r.text
    reply: dict[str, Any] = r.json()
    assert (reply["version"], reply["predicted"], reply["label"]) == (s.version, s.predicted, truth)
    return {
        "variant": s.variant,
        "version": s.version,
        "predicted": s.predicted,
        "score": s.score,
        "label": truth,
    }


def runs(kfp: Simulator, reason: str, version: str | None = None) -> list[dict[str, Any]]:
    found = httpx.get(f"{kfp.url}/kfp-sim/requests", timeout=5).json()["runs"]
    return [
        r
        for r in found
        if r["runtime_config"]["parameters"]["reason"] == reason
        and version in (None, r["runtime_config"]["parameters"]["model_version"])
    ]


def window_of(run: dict[str, Any]) -> pd.DataFrame:
    uri = run["runtime_config"]["parameters"]["window_uri"]
    return pd.read_parquet(Path(uri.removeprefix("file://")))


def worker_labels(worker: Worker, version: str) -> dict[str, Any]:
    route = httpx.get(f"{worker.url}/status", timeout=5).json()["routes"].get(ROUTE, {})
    found: dict[str, Any] = route.get("labels", {}).get(version, {})
    return found


def settled(worker: Worker, version: str, count: int) -> Callable[[], bool]:
    """Every label of `version` in, and an evaluation of the window holding them all."""

    def check() -> bool:
        window = worker_labels(worker, version)
        return bool(
            window.get("received") == count
            and window.get("evaluated_at") is not None
            and window["metrics"]["samples"] == count
        )

    return check


def exact_auc(rows: list[dict[str, Any]]) -> float | None:
    pos = [r["score"] for r in rows if r["label"] == "fraud"]
    neg = [r["score"] for r in rows if r["label"] != "fraud"]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def registry_view(gw: GatewayProc, variant: str) -> dict[str, Any]:
    routes = httpx.get(f"{gw.admin}/admin/routes", timeout=5).json()["routes"]
    found = next(r for r in routes if r["route"] == ROUTE)
    view: dict[str, Any] = next(v for v in found["variants"] if v["name"] == variant)["registry"]
    return view


def test_the_loop_closes_on_real_mlflow_and_bentoml(
    mlflow_server: LocalMlflow,
    bento: tuple[BentoService, BentoService],
    gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    started = time.time()
    champion_svc, challenger_svc = bento
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    logged = log_models(mlflow_server.uri)
    client.create_registered_model(MODEL)
    v1 = register(client, logged["v1"], champion_svc, "1.0.0")
    v2 = register(client, logged["v1"], challenger_svc, "1.1.0")
    # The registry's versions are the services' own: /classify answers name them.
    assert (v1, v2) == (champion_svc.version, challenger_svc.version)
    client.set_registered_model_alias(MODEL, "champion", v1)
    client.set_registered_model_alias(MODEL, "challenger", v2)

    kfp = start_simulator("gt-e2e-kfp", kind="kubeflow")
    worker = Worker(tmp_path / "drift")
    try:
        gw = gateway(
            policy(kfp.url),
            extra=(
                "--registry-uri",
                mlflow_server.uri,
                "--registry-poll-interval",
                "0.5",
                "--rollout-dir",
                str(tmp_path / "rollouts"),
                "--drift-worker-address",
                f"udp://127.0.0.1:{worker.port}",
                "--drift-status-url",
                worker.url,
                "--drift-dir",
                str(tmp_path / "gateway-drift"),
            ),
        )
        poll(
            "the gateway configures the worker",
            lambda: ROUTE in httpx.get(f"{worker.url}/status", timeout=5).json()["routes"],
        )
        with httpx.Client(timeout=10) as http:
            story(gw, http, kfp, worker, client, logged, challenger_svc, started, mlflow_server.uri)
    finally:
        worker.close()
        kfp.proc.stop()


def story(
    gw: GatewayProc,
    http: httpx.Client,
    kfp: Simulator,
    worker: Worker,
    client: MlflowClient,
    logged: dict[str, Logged],
    challenger_svc: BentoService,
    started: float,
    registry_uri: str,
) -> None:
    rng = random.Random(22)
    # 1. The routed version's signature (read from its MLmodel) checks each request.
    bad = http.post(f"{gw.url}/services/{ROUTE}/classify", json={"features": ["a", 0.1, 0.2, 0.3]})
    assert bad.status_code == 400, bad.text
    assert re.fullmatch(
        rf"input 'features': expected float64 values, got string "
        rf"\(signature of {MODEL} version [12]\)",
        bad.json()["error"],
    ), bad.text
    for variant in ("champion", "challenger"):
        assert registry_view(gw, variant)["signature"] == "tensors 'features' float64 [-1]"

    # 2. Serve until the challenger has answered enough (the rollout's first step gives
    # it 20%), then post the labels: champion right, challenger wrong.
    served: dict[str, list[Served]] = {"1": [], "2": []}
    for _ in range(400):
        if len(served["2"]) >= CHALLENGER_LABELS and len(served["1"]) >= FIRST_CHAMPION:
            break
        s = classify(http, gw, rng)
        served[s.version].append(s)
    assert len(served["2"]) >= CHALLENGER_LABELS, {v: len(s) for v, s in served.items()}
    assert rollout_state(gw, ROUTE)["state"]["status"] == "progressing"
    labeled: list[dict[str, Any]] = []
    champion_labeled = served["1"][:FIRST_CHAMPION]
    challenger_labeled = served["2"][:CHALLENGER_LABELS]
    for s in challenger_labeled:
        labeled.append(send_label(http, gw, s, flip(s.predicted)))
    for s in champion_labeled:
        labeled.append(send_label(http, gw, s, s.predicted))

    view = wait_rollout(gw, ROUTE, lambda st: st["status"] != "progressing", timeout=60)
    state = view["state"]
    assert state["status"] == "rolled_back", state
    assert (
        f"gate accuracy failed: 0 of {CHALLENGER_LABELS} labeled predictions correct"
        in state["history"][-1]["reason"]
    ), state["history"][-1]

    poll("the accuracy run", lambda: runs(kfp, "accuracy"), timeout=30)
    time.sleep(1.0)  # more evaluations: the same episode starts nothing more
    (accuracy_run,) = runs(kfp, "accuracy")
    params = accuracy_run["runtime_config"]["parameters"]
    assert (params["model_name"], params["model_version"]) == (ROUTE, "2")
    window = window_of(accuracy_run)
    assert len(window) == CHALLENGER_LABELS and not window["correct"].any()
    assert set(window["key"]) == {s.key for s in challenger_labeled}
    assert set(window["variant"]) == {"challenger"}
    by_key = {s.key: s for s in challenger_labeled}
    for row in window.to_dict("records"):  # joined with each request's own features
        sent = by_key[row["key"]]
        assert [row[f] for f in FEATURES] == pytest.approx(sent.features), row
        assert (row["predicted"], row["label"]) == (sent.predicted, flip(sent.predicted))

    # 3. The data threshold: N-1 champion labels start nothing, the N-th exactly one
    # run. After the rollback every request goes to the champion.
    more: list[Served] = []
    while len(champion_labeled) + len(more) < LABELED_SAMPLES:
        s = classify(http, gw, rng)
        assert s.version == "1", "the rolled-back challenger still gets traffic"
        more.append(s)
    for s in more[:-1]:
        wrong = len(champion_labeled) in CHAMPION_WRONG
        labeled.append(send_label(http, gw, s, flip(s.predicted) if wrong else s.predicted))
        champion_labeled.append(s)
    poll("N-1 champion labels evaluated", settled(worker, "1", LABELED_SAMPLES - 1))
    time.sleep(0.5)  # two more of the worker's ticks
    assert runs(kfp, "labeled_samples") == []
    last = more[-1]
    labeled.append(send_label(http, gw, last, last.predicted))
    champion_labeled.append(last)
    poll("the data-threshold run", lambda: runs(kfp, "labeled_samples"), timeout=30)
    poll("all champion labels evaluated", settled(worker, "1", LABELED_SAMPLES))
    time.sleep(0.5)
    (threshold_run,) = runs(kfp, "labeled_samples")
    params = threshold_run["runtime_config"]["parameters"]
    assert params["model_version"] == "1"
    assert threshold_run["display_name"].startswith(f"switchyard-labeled-samples-{ROUTE}-1-")
    window = window_of(threshold_run)
    assert len(window) == LABELED_SAMPLES
    assert set(window["key"]) == {s.key for s in champion_labeled}
    assert int(window["correct"].sum()) == LABELED_SAMPLES - len(CHAMPION_WRONG)
    assert len(runs(kfp, "accuracy")) == 1  # the champion (28/30) is within its SLO

    # 4. The schedule: every 5 s since the worker heard the route, each run's window
    # named for the schedule's time it ran for (a multiple of 5, however late the tick).
    poll("two scheduled runs", lambda: len(runs(kfp, "schedule")) >= 2, timeout=15)
    scheduled = runs(kfp, "schedule")
    stamps = []
    for run in scheduled:
        uri = run["runtime_config"]["parameters"]["window_uri"]
        found = re.search(r"/(\d{8}T\d{6})Z-[0-9a-f]{16}\.parquet$", uri)
        assert found is not None, uri
        stamps.append(calendar.timegm(time.strptime(found.group(1), "%Y%m%dT%H%M%S")))
    assert all(s % SCHEDULE_S == 0 for s in stamps), stamps
    assert all(s >= int(started) - 1 for s in stamps), (stamps, started)
    assert len(set(stamps)) == len(stamps) == len({r["display_name"] for r in scheduled})

    # 5. A MAJOR-incompatible version: refused by promote with the reason.
    v3 = register(client, logged["v2"], challenger_svc, "2.0.0")
    client.set_registered_model_alias(MODEL, "challenger", v3)
    reason = (
        f"version {v3} of {MODEL} is semver 2.0.0, the champion (version 1) is 1.0.0: MAJOR differs"
    )
    promoted = cli("registry", "promote", MODEL, "challenger", "--registry-uri", registry_uri)
    assert promoted.returncode == 1, promoted.stdout + promoted.stderr
    assert f"refused: {reason}" in promoted.stderr, promoted.stderr
    assert "merchant" in promoted.stderr  # the new required input, named
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    # The running gateway refuses the move too: the challenger keeps version 2.
    poll(
        "the gateway to refuse the incompatible version",
        lambda: reason in (registry_view(gw, "challenger")["problem"] or ""),
    )
    assert registry_view(gw, "challenger")["version"] == "2"

    # 6. The numbers against a hand computation on the labels the test sent.
    admin = httpx.get(f"{gw.admin}/admin/ground-truth/{ROUTE}", timeout=10).json()
    expected = hand(labeled)
    assert set(expected) == {("champion", "1"), ("challenger", "2")}
    assert expected[("champion", "1")]["labels"] == LABELED_SAMPLES
    assert expected[("challenger", "2")]["accuracy"] == 0.0
    assert_equal(admin, expected)
    text = httpx.get(f"{worker.url}/metrics", timeout=5).text
    for (_, version), numbers in expected.items():
        mine = [r for r in labeled if r["version"] == version]
        size = metric(text, "switchyard_model_labeled_window_size", route=ROUTE, version=version)
        assert size == len(mine)
        for name in ("accuracy", "precision", "recall", "f1"):
            got = metric(text, f"switchyard_model_{name}", route=ROUTE, version=version)
            if numbers[name] is None:
                assert got is None, (version, name, got)
            else:
                assert got == pytest.approx(numbers[name]), (version, name, got)
        # The worker's AUC is exact (the rank statistic on the scores, ties one half),
        # not binned like the admin API's.
        auc = metric(text, "switchyard_model_auc", route=ROUTE, version=version)
        want = exact_auc(mine)
        if want is None:
            assert auc is None, (version, auc)
        else:
            assert auc == pytest.approx(want), (version, auc, want)
    for version, reason_, count in (("2", "accuracy", 1), ("1", "labeled_samples", 1)):
        fired = metric(
            text, "switchyard_retrain_triggers_total", route=ROUTE, version=version, reason=reason_
        )
        assert fired == count, (version, reason_, fired)
    assert len(runs(kfp, "accuracy")) == 1 and len(runs(kfp, "labeled_samples")) == 1
    print(
        f"\nground truth e2e: {len(labeled)} labels, {len(scheduled)} scheduled runs at "
        f"{stamps}, {time.time() - started:.1f} s from the first registration"
    )
