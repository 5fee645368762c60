"""The `drift` block of a routing policy: which inputs become features, the reference
data they are compared with, the rolling windows, and what happens on drift.

Like the rest of the policy schema, every model forbids unknown keys and every field
has a description (they flow into `policies/schema.json` and the README). Checks that
need more than one field or the policy file's location (feature kinds against the
route's protocol, local paths inside the allowed roots) live in `drift_problems`, which
`check_policies` runs with the other cross-field checks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.controlplane.policy.fields import (
    COLUMN_PATTERN,
    Duration,
    EnvName,
    FeaturePath,
    StatTest,
    WebURL,
    problem,
    split_target,
)
from gateway.controlplane.policy.triggerspec import LabelsSpec, TriggersSpec

TextDescriptor = Literal[
    "message_count",
    "prompt_chars",
    "prompt_words",
    "mean_word_length",
    "non_ascii_share",
    "digit_share",
    "uppercase_share",
    "max_tokens",
    "temperature",
]
TEXT_DESCRIPTORS: tuple[str, ...] = get_args(TextDescriptor)
REFERENCE_SUFFIXES = (".parquet", ".pq", ".csv")
# Protocols whose bodies carry chat messages or prompts (text descriptors apply).
TEXT_PROTOCOLS = ("openai", "ollama")
Loc = tuple[str | int, ...]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Model):
    """One column of the drift windows, taken from each sampled request."""

    name: str | None = Field(
        default=None,
        pattern=COLUMN_PATTERN,
        description="Column name in the windows, the reference data and the `column` "
        "metric label. Defaults to the descriptor, the path, or TENSOR[INDEX].",
    )
    descriptor: TextDescriptor | None = Field(
        default=None,
        description="A text descriptor of an OpenAI or Ollama request: message_count, "
        "prompt_chars, prompt_words, mean_word_length, non_ascii_share, digit_share, "
        "uppercase_share (of the prompt or messages), max_tokens, temperature.",
    )
    path: FeaturePath | None = Field(
        default=None,
        description="A field of the JSON body by simple path: dotted keys and list "
        "indices, such as inputs.amount or instances[0].features[3].",
    )
    tensor: str | None = Field(
        default=None,
        min_length=1,
        description="A KServe v2 input tensor by name; with `index`, one element of each "
        "row (a batch of N rows gives N samples).",
    )
    index: int | None = Field(
        default=None, ge=0, description="Element of the tensor's row, counted from 0."
    )

    @model_validator(mode="after")
    def _one_source(self) -> FeatureSpec:
        sources = [s for s in (self.descriptor, self.path, self.tensor) if s is not None]
        if len(sources) != 1:
            raise problem(
                "feature_source", "a feature needs exactly one of descriptor, path or tensor"
            )
        if (self.tensor is None) != (self.index is None):
            raise problem("feature_index", "`tensor` and `index` go together")
        return self

    @property
    def column(self) -> str:
        """The column this feature fills."""
        if self.name:
            return self.name
        if self.tensor is not None:
            return f"{self.tensor}[{self.index}]"
        return str(self.descriptor or self.path)


class WindowSpec(_Model):
    """The rolling window of live samples kept per route and model version."""

    size: int = Field(
        default=1000,
        ge=10,
        le=1_000_000,
        description="Most recent samples kept per route and model version.",
    )
    duration: Duration | None = Field(
        default=None,
        description="Samples older than this leave the window (leave out: only `size` bounds it).",
    )
    every: Duration = Field(default=60.0, description="How often each window is evaluated.")
    min_samples: int = Field(
        default=100, ge=1, description="A window with fewer samples is not evaluated."
    )


class RetrySpec(_Model):
    """How an outgoing call (Kubeflow, webhook) is retried."""

    attempts: int = Field(
        default=4, ge=1, le=10, description="Total tries, the first included (1 = no retries)."
    )
    backoff: Duration = Field(
        default=1.0,
        description="Wait before the first retry; doubles after each, up to 30 s. Retried: "
        "connection errors, timeouts, 429 and 5xx answers.",
    )
    timeout: Duration = Field(default=10.0, description="Time limit of each try.")


class KubeflowSpec(_Model):
    """Create a Kubeflow Pipelines run (REST API v2beta1) once per drift episode."""

    endpoint: WebURL = Field(
        description="Base URL of the Kubeflow Pipelines API, such as "
        "http://ml-pipeline.kubeflow:8888 (requests go to /apis/v2beta1/runs)."
    )
    pipeline_id: str = Field(min_length=1, description="ID of the retraining pipeline.")
    pipeline_version_id: str = Field(min_length=1, description="ID of its version to run.")
    experiment_id: str | None = Field(
        default=None,
        min_length=1,
        description="Experiment the run belongs to (leave out: the default experiment).",
    )
    service_account: str | None = Field(
        default=None, min_length=1, description="Kubernetes service account of the run."
    )
    params: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra runtime parameters. The gateway always sends model_name, "
        "model_version, window_uri and drift_summary (JSON); these are added to them.",
    )
    token_env: EnvName | None = Field(
        default=None,
        description="Environment variable holding the bearer token sent as "
        "`Authorization: Bearer ...` (kept out of the policy on purpose).",
    )
    retries: RetrySpec = Field(default=RetrySpec(), description="Retries with backoff.")


class WebhookSpec(_Model):
    """POST the drift event as JSON, HMAC-signed, to any receiver (Alertmanager, Slack
    relays, ...)."""

    url: WebURL = Field(description="Where the event is POSTed.")
    secret_env: EnvName | None = Field(
        default=None,
        description="Environment variable holding the HMAC-SHA256 secret; the signature "
        "of `TIMESTAMP.BODY` goes in x-switchyard-signature (sha256=HEX), the timestamp "
        "in x-switchyard-timestamp.",
    )
    retries: RetrySpec = Field(default=RetrySpec(), description="Retries with backoff.")


class OnDriftSpec(_Model):
    """What happens once per drift episode (then the cooldown applies)."""

    save_to: str | None = Field(
        default=None,
        min_length=1,
        description="Folder (relative to the policy file) or URI (file://, s3://, gs://, "
        "...) where the drifted window is saved as Parquet; its URI is passed on to "
        "Kubeflow and the webhook. Leave out: the windows folder of --drift-dir.",
    )
    kubeflow: KubeflowSpec | None = Field(
        default=None, description="Start a retraining run in Kubeflow Pipelines."
    )
    webhook: WebhookSpec | None = Field(default=None, description="Send an HMAC-signed JSON event.")


class DriftSpec(_Model):
    """Live inputs sampled into rolling windows per model version and compared with
    reference data by Evidently in the drift worker process."""

    reference: str = Field(
        min_length=1,
        description="Reference data: a Parquet or CSV file (relative to the policy file, "
        "inside the allowed roots, or a file://, s3://, gs:// URI), or models:/NAME@ALIAS "
        "(or models:/NAME/VERSION), whose version's run holds `reference_artifact`.",
    )
    reference_artifact: str = Field(
        default="reference.parquet",
        min_length=1,
        description="Artifact path of the reference data in the registry version's run "
        "(with a models:/ reference).",
    )
    features: tuple[FeatureSpec, ...] = Field(
        default=(),
        max_length=256,
        description="Inputs that become columns. Leave out to use the reference data's "
        "columns: text descriptors (openai, ollama), TENSOR[INDEX] (kserve-v2) or "
        "top-level fields (json).",
    )
    sample: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Share of requests sampled into the windows (per gateway process).",
    )
    window: WindowSpec = Field(default=WindowSpec(), description="The rolling windows.")
    drift_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The window drifts when at least this share of its columns drift.",
    )
    method: StatTest | None = Field(
        default=None,
        description="Evidently drift method for every column (ks, psi, wasserstein, "
        "jensenshannon, chisquare, ...). Leave out: Evidently picks by column type and size.",
    )
    methods: dict[str, StatTest] = Field(
        default_factory=dict, description="Drift method per column, overriding `method`."
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        description="Drift threshold of every column's method (leave out: the method's "
        "default, e.g. p < 0.05 for ks, >= 0.1 for psi).",
    )
    cooldown: Duration = Field(
        default=3600.0,
        description="After the actions of one drift episode, the least time before another "
        "episode of the same route and version acts.",
    )
    clear_after: int = Field(
        default=2,
        ge=1,
        description="Evaluations in a row without drift that end an episode.",
    )
    on_drift: OnDriftSpec = Field(
        default=OnDriftSpec(),
        description="What happens once per drift episode, and once per episode of each "
        "retrain trigger (`triggers`).",
    )
    labels: LabelsSpec = Field(
        default=LabelsSpec(),
        description="Labeled windows from `POST /v1/feedback` labels: accuracy, precision, "
        "recall, F1, AUC and concept drift per model version.",
    )
    triggers: TriggersSpec = Field(
        default=TriggersSpec(),
        description="Retrain triggers: schedule, drift alert, data threshold, accuracy SLO.",
    )


def is_registry(reference: str) -> bool:
    """Whether a reference names a registry model version rather than a file."""
    return reference.startswith("models:/")


def is_remote(location: str) -> bool:
    """A URI with a scheme other than file:// (s3://, gs://, ...): not a local path."""
    scheme = urlsplit(location).scheme
    return len(scheme) > 1 and scheme != "file"


def policy_dir(source_file: str) -> Path:
    """The directory a policy's relative paths start from (a ConfigMap's own folder for
    its entries, the working directory for policies built in memory)."""
    if source_file.startswith("<"):
        return Path.cwd()
    return Path(source_file.split(":data[", 1)[0]).resolve().parent


def local_path(location: str, base: Path, roots: Sequence[str | os.PathLike[str]]) -> Path:
    """The absolute path of a local file or folder named in a policy.

    Relative paths start at `base` (the policy file's directory). The result, with
    symlinks resolved, must lie inside `base` or one of `roots`: a policy may not read
    or write files elsewhere on the machine. Raises `ValueError` saying why.
    """
    text = location[len("file://") :] if location.startswith("file://") else location
    resolved = (base / Path(text).expanduser()).resolve()
    allowed = [base.resolve(), *(Path(r).resolve() for r in roots)]
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        shown = ", ".join(str(r) for r in allowed)
        raise ValueError(
            f"{location!r} resolves to {resolved}, outside the allowed roots ({shown}); "
            "move the file there or add its folder with --file-root"
        )
    return resolved


def drift_problems(
    spec: DriftSpec,
    protocol: str,
    source_file: str,
    roots: Sequence[str | os.PathLike[str]] | None,
) -> list[tuple[Loc, str]]:
    """Problems of a drift block that its schema alone cannot see, as (location within
    the block, message). With `roots` None, local paths are not checked (the drift
    worker checks them again before it opens anything)."""
    out: list[tuple[Loc, str]] = []
    columns: dict[str, int] = {}
    for i, feature in enumerate(spec.features):
        if feature.column in columns:
            out.append((("features", i, "name"), f"column {feature.column!r} is listed twice"))
        columns.setdefault(feature.column, i)
        if feature.descriptor is not None and protocol not in TEXT_PROTOCOLS:
            message = f"text descriptors need an openai or ollama route, not {protocol}"
            out.append((("features", i, "descriptor"), message))
        if feature.tensor is not None and protocol != "kserve-v2":
            message = f"tensor features need a kserve-v2 route, not {protocol}"
            out.append((("features", i, "tensor"), message))
    if columns:
        for name in spec.methods:
            if name not in columns:
                message = f"no feature column {name!r} (columns: {', '.join(columns)})"
                out.append((("methods", name), message))
    reference = spec.reference
    if is_registry(reference):
        try:
            split_target(reference)
        except ValueError as exc:
            out.append((("reference",), str(exc)))
        data_file = spec.reference_artifact
    else:
        data_file = reference
    if not urlsplit(data_file).path.lower().endswith(REFERENCE_SUFFIXES):
        where = "reference_artifact" if is_registry(reference) else "reference"
        out.append(((where,), f"{data_file!r}: reference data must be .parquet, .pq or .csv"))
    if roots is not None:
        base = policy_dir(source_file)
        locations: list[tuple[Loc, str]] = []
        if not is_registry(reference) and not is_remote(reference):
            locations.append((("reference",), reference))
        save_to = spec.on_drift.save_to
        if save_to is not None and not is_remote(save_to):
            locations.append((("on_drift", "save_to"), save_to))
        for loc, location in locations:
            try:
                local_path(location, base, roots)
            except ValueError as exc:
                out.append((loc, str(exc)))
    return out
