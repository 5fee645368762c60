"""The models a KServe simulator serves, and the checks Triton makes on a request.

Every model is a fraud scorer: input `features` FP32 [-1, F], output `probability`
FP32 [-1, 1] = sigmoid(w . x + b), with weights that depend on the model version
(version 1 is the champion, version 2 the challenger, any other version gets weights
derived from its number; `--weights` sets them for every version). So a test can tell
from the numbers alone which version, and which simulator, answered.

A decoupled model (Triton's `model_transaction_policy { decoupled: true }`) sends N
responses per request over gRPC `ModelStreamInfer`, each with `probability` and an
`index` INT32 [1] output (0..N-1); Triton refuses such models over HTTP `/infer` (501)
and over gRPC `ModelInfer` (UNIMPLEMENTED), and so does the simulator.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from gateway.simulate.faults import FaultPlan
from gateway.simulate.kserve_tensor import Tensor, TensorError, TensorSpec, to_float32
from gateway.simulate.stats import SimStats

DEFAULT_MODEL: Final = "fraud-detector"
DEFAULT_STREAM_MODEL: Final = "fraud-detector-stream"
PLATFORM: Final = "python"
# Champion and challenger weights (then the bias): far enough apart that the same
# features give clearly different probabilities.
PRESET_WEIGHTS: Final = {
    "1": (0.8, -0.5, 1.2, 0.3, -0.2),
    "2": (-0.4, 0.9, 0.6, -1.1, 0.1),
}


def weights_for(version: str, features: int) -> tuple[float, ...]:
    """Deterministic weights (features, then bias) for a model version."""
    preset = PRESET_WEIGHTS.get(version)
    if preset is not None and features == len(preset) - 1:
        return preset
    # Derived from a CRC, not hash(): the same in every process, so two simulators
    # started with the same version answer the same.
    out = []
    for index in range(features + 1):
        digest = zlib.crc32(f"{version}:{index}".encode())
        out.append(round((digest % 2001) / 1000.0 - 1.0, 3))
    return tuple(out)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def request_tag(request_id: str) -> str:
    """Triton's prefix of request errors: `[request id: ID] ` (`<id_unknown>` if none)."""
    return f"[request id: {request_id or '<id_unknown>'}] "


@dataclass(frozen=True, slots=True)
class SimModel:
    """One served model: its tensors, versions and per-version weights."""

    name: str
    versions: tuple[str, ...]
    weights: Mapping[str, tuple[float, ...]]
    features: int = 4
    decoupled: bool = False
    inputs: tuple[TensorSpec, ...] = field(init=False)
    outputs: tuple[TensorSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", (TensorSpec("features", "FP32", (-1, self.features)),))
        outputs = [TensorSpec("probability", "FP32", (-1, 1))]
        if self.decoupled:
            outputs.append(TensorSpec("index", "INT32", (1,)))
        object.__setattr__(self, "outputs", tuple(outputs))

    @property
    def latest(self) -> str:
        """The version an unversioned request gets (the highest, as Triton picks)."""
        return self.versions[-1]

    def metadata(self, versions: Sequence[str] | None = None) -> dict[str, object]:
        """The `$metadata_model_response` JSON object."""
        return {
            "name": self.name,
            "versions": list(self.versions if versions is None else versions),
            "platform": PLATFORM,
            "inputs": [spec.metadata() for spec in self.inputs],
            "outputs": [spec.metadata() for spec in self.outputs],
        }

    def config(self) -> dict[str, object]:
        """The model configuration (`GET /v2/models/{m}/config`), Triton's JSON form."""
        return {
            "name": self.name,
            "platform": "",
            "backend": PLATFORM,
            "max_batch_size": 0,
            "input": [_config_tensor(spec) for spec in self.inputs],
            "output": [_config_tensor(spec) for spec in self.outputs],
            "model_transaction_policy": {"decoupled": self.decoupled},
            "version_policy": {"specific": {"versions": [int(v) for v in self.versions]}},
        }

    def input_spec(self, name: str, datatype: str, shape: Sequence[int], tag: str) -> TensorSpec:
        """The spec of a request input, or the error Triton gives for it."""
        for spec in self.inputs:
            if spec.name == name:
                break
        else:
            allowed = ", ".join(spec.name for spec in self.inputs)
            raise TensorError(
                f"{tag}unexpected inference input '{name}' for model '{self.name}', "
                f"allowed inputs are: {allowed}"
            )
        if datatype != spec.datatype:
            raise TensorError(
                f"{tag}inference input '{name}' data-type is '{datatype}', but model "
                f"'{self.name}' expects '{spec.datatype}'"
            )
        if not spec.matches(shape):
            raise TensorError(
                f"{tag}unexpected shape for input '{name}' for model '{self.name}'. "
                f"Expected {_dims(spec.shape)}, got {_dims(shape)}"
            )
        return spec

    def output_spec(self, name: str, tag: str) -> TensorSpec:
        """The spec of a requested output, or Triton's error for an unknown one."""
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise TensorError(f"{tag}unexpected inference output '{name}' for model '{self.name}'")

    def infer(self, version: str, inputs: Mapping[str, Tensor], tag: str) -> list[Tensor]:
        """Every output for complete, checked inputs (see `input_spec`)."""
        missing = [spec.name for spec in self.inputs if spec.name not in inputs]
        if missing:
            raise TensorError(
                f"{tag}expected {len(self.inputs)} inputs but got {len(inputs)} inputs for "
                f"model '{self.name}'. Got input(s) {sorted(inputs)}, but missing required "
                f"input(s) {missing}. Please provide all required input(s)."
            )
        features = inputs["features"]
        rows = features.shape[0]
        width = self.features
        values = features.values
        weights = self.weights[version][:width]
        bias = self.weights[version][width]
        scores = [
            _sigmoid(
                sum(
                    w * x
                    for w, x in zip(weights, values[row * width : row * width + width], strict=True)
                )
                + bias
            )
            for row in range(rows)
        ]
        return [Tensor("probability", "FP32", (rows, 1), to_float32(scores))]

    def stream(
        self, version: str, inputs: Mapping[str, Tensor], count: int, tag: str
    ) -> list[list[Tensor]]:
        """The `count` responses of a decoupled model to one request."""
        outputs = self.infer(version, inputs, tag)
        return [[*outputs, Tensor("index", "INT32", (1,), (index,))] for index in range(count)]


def _config_tensor(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": list(spec.shape)}


def _dims(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(dim) for dim in shape) + "]"


class ModelNotFound(TensorError):
    """An unknown model or version (Triton: 400 for the model, except 404 on /infer;
    404 for the version)."""


class ModelRepository:
    """The models of one simulator, looked up by name and optional version."""

    def __init__(self, models: Sequence[SimModel]) -> None:
        self.models = {model.name: model for model in models}

    def resolve(self, name: str, version: str) -> tuple[SimModel, str]:
        """The model and concrete version a request addresses; raises `ModelNotFound`."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"Request for unknown model: '{name}' is not found")
        if not version:
            return model, model.latest
        if version not in model.versions:
            if not version.isdigit():
                raise ModelNotFound(
                    f"failed to get model version from specified version string '{version}' "
                    "(details: stoll), version should be an integral value > 0"
                )
            raise ModelNotFound(
                f"Request for unknown model: '{name}' version {version} is not found", 404
            )
        return model, version

    def index(self) -> list[dict[str, str]]:
        """`POST /v2/repository/index`: every model version, all READY."""
        return [
            {"name": model.name, "version": version, "state": "READY"}
            for model in self.models.values()
            for version in model.versions
        ]


class KServeStats(SimStats):
    """`SimStats` plus what KServe tests count: inference requests per model and
    version (HTTP and gRPC, a stream counts each request on it) and faults injected."""

    __slots__ = ("by_model", "faults_injected", "stream_responses")

    def __init__(self) -> None:
        super().__init__()
        self.by_model: dict[str, dict[str, int]] = {}
        self.faults_injected: dict[str, int] = {}
        self.stream_responses = 0

    def count_model(self, name: str, version: str) -> None:
        """Count one inference request that reached a served model version."""
        versions = self.by_model.setdefault(name, {})
        versions[version] = versions.get(version, 0) + 1

    def count_faults(self, plan: FaultPlan) -> None:
        """Count the behaviours a fault plan imposes on one request."""
        if plan.status is not None:
            self._fault("status")
        if plan.hang:
            self._fault("hang")
        if plan.garbage:
            self._fault("garbage")
        if plan.reset:
            self._fault("reset")
        if plan.cut_after is not None:
            self._fault("cut")
        if plan.latency_s is not None:
            self._fault("latency")

    def _fault(self, kind: str) -> None:
        self.faults_injected[kind] = self.faults_injected.get(kind, 0) + 1

    def reset(self) -> None:
        """Zero every counter (the in-flight gauge stays live)."""
        super().reset()
        self.by_model = {}
        self.faults_injected = {}
        self.stream_responses = 0

    def snapshot(self) -> dict[str, object]:
        """The `SimStats` counters plus `by_model`, `faults` and `stream_responses`."""
        snap = super().snapshot()
        snap["by_model"] = {name: dict(versions) for name, versions in self.by_model.items()}
        snap["faults"] = dict(self.faults_injected)
        snap["stream_responses"] = self.stream_responses
        return snap
