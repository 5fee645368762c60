"""Signatures and semantic versions end to end: real MLflow (models logged with
`mlflow.pyfunc.log_model(..., signature=infer_signature(...))`), a real gateway and the
KServe and BentoML simulators.

- Requests are checked against the signature of the version they are routed to, and a
  mismatch is a 400 in the protocol's shape naming the input.
- A version whose switchyard.semver MAJOR (and signature) differs from the champion's
  is refused by `policy validate` and `registry promote` with the reason, gets no
  traffic in a gateway (or the variant keeps its last compatible version), and is
  allowed when the policy lists it in `signature.allow_incompatible`.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature

from gateway.quickstart.mlflow_server import LocalMlflow
from tests.procs import (
    REPO,
    GatewayProc,
    KServeSimulator,
    Simulator,
    poll,
    start_kserve,
    start_simulator,
)

POLL = "0.5"
SIM_MODEL = "fraud-detector"  # the model the KServe simulator serves


@dataclass(frozen=True)
class Logged:
    """A model logged once (with its signature), registered as many versions as needed."""

    uri: str
    run_id: str
    model_id: str


@pytest.fixture(scope="module")
def logged(mlflow_server: LocalMlflow) -> dict[str, Logged]:
    """Two logged models: `four` takes features float32 [-1, 4], `five` [-1, 5]."""
    # Imported here, quietly: importing mlflow.pyfunc warns about MLflow's own type hints,
    # and warnings are errors in this suite.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.pyfunc

        class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
            """The smallest pyfunc model: only its signature matters here."""

            # No type hints: MLflow would read them as a second, conflicting signature.
            def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
                return model_input

    out: dict[str, Logged] = {}
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        for key, width in (("four", 4), ("five", 5)):
            signature = infer_signature({"features": np.zeros((2, width), dtype=np.float32)})
            with mlflow.start_run() as run, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=Echo(), signature=signature, pip_requirements=[]
                )
            out[key] = Logged(info.model_uri, run.info.run_id, info.model_id)
    finally:
        mlflow.set_tracking_uri(previous)
    return out


@pytest.fixture(scope="module")
def kserve_sim() -> Iterator[KServeSimulator]:
    sim = start_kserve("sig-kserve", grpc=False)
    yield sim
    sim.proc.stop()


@pytest.fixture(scope="module")
def bentoml_sim() -> Iterator[Simulator]:
    sim = start_simulator("sig-bento", kind="bentoml")
    yield sim
    sim.proc.stop()


def add_version(
    client: MlflowClient,
    name: str,
    model: Logged | str,
    url: str,
    protocol: str,
    semver: str,
    run_id: str = "",
) -> str:
    """Register a version of `model` (a logged model, or a source of `run_id`)."""
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        client.create_registered_model(name)
    tags = {
        "switchyard.endpoint": url,
        "switchyard.protocol": protocol,
        "switchyard.semver": semver,
    }
    if protocol == "kserve-v2":
        tags["switchyard.model"] = SIM_MODEL
    if isinstance(model, Logged):
        mv = client.create_model_version(
            name, source=model.uri, run_id=model.run_id, tags=tags, model_id=model.model_id
        )
    else:
        mv = client.create_model_version(name, source=model, run_id=run_id, tags=tags)
    return str(mv.version)


def policy(route: str, protocol: str, variants: str, signature: str) -> str:
    return f"""apiVersion: switchyard/v1
kind: RoutingPolicy
route: {route}
protocol: {protocol}
variants:
{variants}
signature: {signature}
"""


def one_variant(model: str) -> str:
    return f"  - name: champion\n    target: models:/{model}@champion\n"


def infer(gw: GatewayProc, route: str, datatype: str, shape: list[int]) -> httpx.Response:
    count = int(np.prod(shape))
    data: list[object] = ["x"] * count if datatype == "BYTES" else [0.25] * count
    body = {"inputs": [{"name": "features", "datatype": datatype, "shape": shape, "data": data}]}
    return httpx.post(f"{gw.url}/v2/models/{route}/infer", json=body, timeout=10)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def registry_view(gw: GatewayProc, route: str, variant: str) -> dict[str, Any]:
    routes = httpx.get(f"{gw.admin}/admin/routes", timeout=5).json()["routes"]
    found = next(r for r in routes if r["route"] == route)
    view: dict[str, Any] = next(v for v in found["variants"] if v["name"] == variant)["registry"]
    return view


def test_requests_are_checked_against_the_routed_versions_signature(
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    logged: dict[str, Logged],
    kserve_sim: KServeSimulator,
    bentoml_sim: Simulator,
    gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    kmodel, jmodel, nmodel = "sig-kserve-model", "sig-json-model", "sig-nosig-model"
    k1 = add_version(mlflow_client, kmodel, logged["four"], kserve_sim.url, "kserve-v2", "1.0.0")
    add_version(mlflow_client, jmodel, logged["four"], bentoml_sim.url, "json", "1.0.0")
    # A version whose source holds no model: its signature cannot be read.
    run = logged["four"].run_id
    add_version(
        mlflow_client, nmodel, f"runs:/{run}/no-model", kserve_sim.url, "kserve-v2", "1.0.0", run
    )
    for model in (kmodel, jmodel, nmodel):
        mlflow_client.set_registered_model_alias(model, "champion", "1")
    gw = gateway(
        policy("fraud-k", "kserve-v2", one_variant(kmodel), "{validate_requests: true}"),
        policy(
            "fraud-j", "json", one_variant(jmodel), "{validate_requests: true, apis: [/predict]}"
        ),
        policy("fraud-n", "kserve-v2", one_variant(nmodel), "{validate_requests: true}"),
        extra=("--registry-uri", mlflow_server.uri, "--registry-poll-interval", POLL),
    )

    ok = infer(gw, "fraud-k", "FP32", [2, 4])
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-switchyard-version"] == k1
    wide = infer(gw, "fraud-k", "FP32", [1, 5])
    assert wide.status_code == 400
    assert wide.json() == {
        "error": f"input 'features': expected shape [-1, 4], got [1, 5] "
        f"(signature of {kmodel} version {k1})"
    }
    text = infer(gw, "fraud-k", "BYTES", [1, 4])
    assert text.status_code == 400
    assert text.json()["error"].startswith("input 'features': expected FP32 (float32), got BYTES")

    services = f"{gw.url}/services/fraud-j"
    good = httpx.post(f"{services}/predict", json={"features": [[0.1, 0.2, 0.3, 0.4]]}, timeout=10)
    assert good.status_code == 200, good.text
    bad = httpx.post(f"{services}/predict", json={"features": [["a", 0.2, 0.3, 0.4]]}, timeout=10)
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("input 'features': expected float32 values, got string")
    short = httpx.post(f"{services}/predict", json={"rows": [[0.1, 0.2, 0.3, 0.4]]}, timeout=10)
    assert short.status_code == 400
    assert short.json()["error"].startswith("input 'features' is missing")
    # /classify is not in `apis`: passed through unchecked to the service.
    one = httpx.post(f"{services}/classify", json={"features": [0.1, 0.2, 0.3, 0.4]}, timeout=10)
    assert one.status_code == 200, one.text

    # No readable signature: served all the same, unchecked (the backend answers the
    # malformed request itself), and the admin API says why.
    assert infer(gw, "fraud-n", "FP32", [2, 4]).status_code == 200
    unchecked = infer(gw, "fraud-n", "FP32", [1, 5])
    assert "signature of" not in unchecked.text
    view = registry_view(gw, "fraud-n", "champion")
    assert view["signature"] is None and "MLmodel could not be read" in view["signature_problem"]
    assert registry_view(gw, "fraud-k", "champion")["signature"] == (
        "tensors 'features' float32 [-1, 4]"
    )


def compat_policy(model: str, allow: bool) -> str:
    variants = (
        f"  - name: champion\n    weight: 50\n    target: models:/{model}@champion\n"
        f"  - name: challenger\n    weight: 50\n    target: models:/{model}@challenger\n"
    )
    allowed = ", allow_incompatible: [challenger]" if allow else ""
    return policy("fraud-compat", "kserve-v2", variants, "{validate_requests: true" + allowed + "}")


def test_a_major_incompatible_version_is_refused_with_the_reason(
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    logged: dict[str, Logged],
    kserve_sim: KServeSimulator,
    gateway: Callable[..., GatewayProc],
    tmp_path: Path,
) -> None:
    model = "sig-compat-model"
    v1 = add_version(mlflow_client, model, logged["four"], kserve_sim.url, "kserve-v2", "1.4.2")
    v2 = add_version(mlflow_client, model, logged["five"], kserve_sim.url, "kserve-v2", "2.0.0")
    v3 = add_version(mlflow_client, model, logged["four"], kserve_sim.url, "kserve-v2", "1.5.0")
    mlflow_client.set_registered_model_alias(model, "champion", v1)
    mlflow_client.set_registered_model_alias(model, "challenger", v2)
    reason = (
        f"version {v2} of {model} is semver 2.0.0, the champion (version {v1}) is 1.4.2: "
        "MAJOR differs; inputs: 'features' float32 [-1, 4] -> float32 [-1, 5]"
    )
    strict, allowing = tmp_path / "strict", tmp_path / "allowing"
    for folder, allow in ((strict, False), (allowing, True)):
        folder.mkdir()
        (folder / "compat.yaml").write_text(compat_policy(model, allow))
    registry = ("--registry-uri", mlflow_server.uri)

    checked = cli("policy", "validate", str(strict), *registry)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert reason in checked.stdout
    assert "signature.allow_incompatible" in checked.stdout
    promoted = cli("registry", "promote", model, "challenger", *registry)
    assert promoted.returncode == 1, promoted.stdout + promoted.stderr
    assert f"refused: {reason}" in promoted.stderr
    assert mlflow_client.get_model_version_by_alias(model, "champion").version == v1

    # A gateway serving the strict policy: the challenger gets no traffic (it never had
    # a compatible version), the champion serves every request, and the reason shows.
    gw = gateway(
        compat_policy(model, allow=False),
        extra=(*registry, "--registry-poll-interval", POLL),
    )
    versions = {infer(gw, "fraud-compat", "FP32", [1, 4]).headers["x-switchyard-version"]}
    versions |= {
        infer(gw, "fraud-compat", "FP32", [1, 4]).headers["x-switchyard-version"] for _ in range(20)
    }
    assert versions == {v1}
    view = registry_view(gw, "fraud-compat", "challenger")
    assert reason in view["problem"] and view["version"] is None
    assert gw.metric("switchyard_registry_problems", route="fraud-compat") == 1

    # The challenger alias moves to a compatible version: it serves; then back to the
    # incompatible one: the variant keeps the compatible version and says why.
    mlflow_client.set_registered_model_alias(model, "challenger", v3)
    poll(
        "the compatible challenger to serve",
        lambda: registry_view(gw, "fraud-compat", "challenger")["version"] == v3,
    )
    mlflow_client.set_registered_model_alias(model, "challenger", v2)
    poll(
        "the move to the incompatible version to be refused",
        lambda: (
            "keeping version" in (registry_view(gw, "fraud-compat", "challenger")["problem"] or "")
        ),
    )
    view = registry_view(gw, "fraud-compat", "challenger")
    assert view["version"] == v3 and view["registry_version"] == v2
    served = {
        infer(gw, "fraud-compat", "FP32", [1, 4]).headers["x-switchyard-version"] for _ in range(30)
    }
    assert served == {v1, v3}

    # Allowed explicitly by the policy: validate passes, promote moves the alias.
    allowed = cli("policy", "validate", str(allowing), *registry)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    forced = cli("registry", "promote", model, "challenger", "--policies", str(allowing), *registry)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert f"incompatible, promoted as allowed: {reason}" in forced.stdout
    assert mlflow_client.get_model_version_by_alias(model, "champion").version == v2
    # The gateway follows: version 2 is the champion (both variants serve it now), and
    # requests are checked against its signature.
    poll(
        "requests to be checked against version 2's signature",
        lambda: "expected shape [-1, 5]" in infer(gw, "fraud-compat", "FP32", [1, 4]).text,
    )
    assert registry_view(gw, "fraud-compat", "challenger")["problem"] is None


def test_grpc_model_infer_is_checked_against_the_routed_versions_signature(
    mlflow_server: LocalMlflow,
    mlflow_client: MlflowClient,
    logged: dict[str, Logged],
    gateway: Callable[..., GatewayProc],
) -> None:
    """tritonclient.grpc through the gateway's gRPC front: the same check as over HTTP,
    refused with INVALID_ARGUMENT naming the input before the backend is called."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    sim = start_kserve("sig-kserve-grpc")  # with its gRPC port
    try:
        model = "sig-grpc-model"
        v1 = add_version(mlflow_client, model, logged["four"], sim.url, "kserve-v2", "1.0.0")
        mlflow_client.set_registered_model_alias(model, "champion", v1)
        grpc_port = sim.grpc.rsplit(":", 1)[1]
        variant = f"  - name: champion\n    target: models:/{model}@champion\n"
        variant += f"    grpc_port: {grpc_port}\n"
        gw = gateway(
            policy("fraud-g", "kserve-v2", variant, "{validate_requests: true}"),
            extra=(
                "--registry-uri",
                mlflow_server.uri,
                "--registry-poll-interval",
                POLL,
                "--grpc-port",
                "0",
            ),
        )
        client = triton.InferenceServerClient(gw.grpc)

        def call(shape: list[int]) -> triton.InferResult:
            tensor = triton.InferInput("features", shape, "FP32")
            tensor.set_data_from_numpy(np.full(shape, 0.25, dtype=np.float32))
            return client.infer("fraud-g", [tensor])

        assert call([2, 4]).get_response().model_name == "fraud-g"
        with pytest.raises(InferenceServerException) as refused:
            call([1, 5])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert refused.value.message() == (
            f"input 'features': expected shape [-1, 4], got [1, 5] "
            f"(signature of {model} version {v1})"
        )
        client.close()
    finally:
        sim.proc.stop()
