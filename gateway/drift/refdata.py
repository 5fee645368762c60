"""Reference data: the sample of inputs a model was trained on, that windows are
compared with. Loaded by the drift worker only (pandas).

Three sources, as the policy's `drift.reference` says:

- a local Parquet or CSV file, relative to the policy file and inside the allowed roots;
- a URI pyarrow can read (s3://, gs://, hdfs://, file://);
- `models:/NAME@ALIAS` or `models:/NAME/VERSION`: the registry resolves it to a model
  version, whose training run holds the file as an artifact (`reference.parquet` by
  default; the version tag `switchyard.drift.reference` may name another path). The
  alias is re-resolved every few minutes, so promoting a model brings its own reference.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gateway.controlplane.policy.driftspec import DriftSpec, is_registry, is_remote, local_path
from gateway.controlplane.policy.fields import split_target
from gateway.controlplane.registry.client import MlflowRegistry, RegistryConfig

REFERENCE_TAG = "switchyard.drift.reference"
REFRESH_REGISTRY = 300.0  # seconds between re-resolutions of a models:/ reference


class ReferenceError(Exception):
    """The reference data cannot be loaded; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Reference:
    """Loaded reference data and where it came from."""

    frame: pd.DataFrame
    origin: str
    loaded_at: float
    registry: bool = False  # re-resolve it from time to time


def read_table(data: bytes, name: str) -> pd.DataFrame:
    """A Parquet or CSV file's bytes as a DataFrame (by the name's suffix)."""
    buffer = io.BytesIO(data)
    if name.lower().endswith(".csv"):
        return pd.read_csv(buffer)
    return pd.read_parquet(buffer)


def _read_uri(uri: str) -> bytes:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_file(path) as handle:
        data: bytes = handle.read()
        return data


async def load_reference(
    spec: DriftSpec,
    base: Path,
    roots: Sequence[str],
    registry: RegistryConfig | None,
    now: float,
) -> Reference:
    """Load the reference of one drift block; raises `ReferenceError`."""
    location = spec.reference
    try:
        if is_registry(location):
            return await _from_registry(spec, registry, now)
        if is_remote(location):
            data = await asyncio.to_thread(_read_uri, location)
            origin = location
        else:
            path = local_path(location, base, roots)
            data = await asyncio.to_thread(path.read_bytes)
            origin = str(path)
        frame = await asyncio.to_thread(read_table, data, location)
    except ReferenceError:
        raise
    except Exception as exc:  # pandas, pyarrow and the OS raise many kinds; say which
        raise ReferenceError(f"reference {location}: {type(exc).__name__}: {exc}") from None
    return Reference(frame, origin, now)


async def _from_registry(spec: DriftSpec, config: RegistryConfig | None, now: float) -> Reference:
    if config is None:
        raise ReferenceError(
            f"reference {spec.reference} needs a model registry: start the gateway with "
            "--registry-uri (or SWITCHYARD_REGISTRY_URI)"
        )
    name, alias, pinned = split_target(spec.reference)
    async with MlflowRegistry(config) as registry:
        version = (
            await registry.get_alias(name, alias)
            if alias
            else await registry.get_version(name, pinned or "")
        )
        artifact = version.tags.get(REFERENCE_TAG) or spec.reference_artifact
        if not version.run_id:
            raise ReferenceError(
                f"{name} version {version.version} has no run: log {artifact} as an artifact "
                "of the training run and register the version with that run_id"
            )
        data = await registry.get_artifact(version.run_id, artifact)
    frame = await asyncio.to_thread(read_table, data, artifact)
    origin = f"models:/{name}/{version.version} (run {version.run_id}) {artifact}"
    return Reference(frame, origin, now, registry=True)
