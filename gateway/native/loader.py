"""Loads the request path's modules compiled with mypyc, when they match the source.

`switchyard compile` (`make compile`, run by `make run`, `test` and `bench`) compiles
the modules in `HOT_MODULES` into `gateway/_compiled/` with a manifest holding a
digest of their source. At import of the `gateway` package, a finder is installed that
serves those module names from the compiled files, but only when the digest still
matches the `.py` files on disk: after an edit the gateway runs the (slower, identical)
Python code instead of stale machine code, and says so at startup. The finder is all
or nothing: compiled modules call each other directly and share class layouts, so a
mix of compiled and interpreted versions of the same set would not work.

`SWITCHYARD_COMPILED`: `auto` (default: compiled when fresh), `0` (always Python), or
`require` (`switchyard serve` refuses to start without them: benchmarks use it).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

# The request path (parse, decide, pick, proxy, relay, mirror) and what it calls per
# request. A class compiled here cannot be subclassed by interpreted code, so a module
# that subclasses one of these classes belongs in the list too.
HOT_MODULES: Final = (
    "gateway.dataplane.decide",
    "gateway.dataplane.exchange",
    "gateway.dataplane.feedback.ids",
    "gateway.dataplane.feedback.log",
    "gateway.dataplane.flow",
    "gateway.dataplane.fronts",
    "gateway.dataplane.health",
    "gateway.dataplane.http.wire",
    "gateway.dataplane.pick",
    "gateway.dataplane.plane",
    "gateway.dataplane.proxy",
    "gateway.dataplane.picker_state",
    "gateway.dataplane.quota",
    "gateway.dataplane.scorers",
    "gateway.dataplane.session_tokens",
    "gateway.dataplane.http.server",
    "gateway.dataplane.shadow.mirror",
    "gateway.dataplane.shadow.call",
    # What runs per shadowed request once both answers are in: the comparison (by
    # protocol: LLM text, JSON labels, KServe tensors), its result type, and the
    # shadow series it is counted in.
    "gateway.dataplane.shadow.compare",
    "gateway.dataplane.shadow.labels",
    "gateway.dataplane.shadow.tensors",
    "gateway.dataplane.shadow.verdict",
    "gateway.observability.shadow_metrics",
    "gateway.dataplane.shared",
    "gateway.dataplane.snapshot",
    "gateway.dataplane.styles",
    "gateway.dataplane.http.upstream",
    # The drift tap: `offer` runs for every request of a route with a drift block; and
    # feature extraction, the larger part of a sampled request's cost (in the sender's
    # batch, on the same event loop).
    "gateway.drift.features",
    "gateway.drift.tap",
    "gateway.observability.flow_metrics",
    "gateway.observability.histogram",
    "gateway.observability.metrics",
    "gateway.observability.picker_metrics",
    "gateway.observability.quota_metrics",
    # What the exchange calls per request while tracing is on: the sampling decision
    # for every request, the span records for sampled ones; and their OTLP encoding,
    # which runs on the same event loop (the exporter's task).
    "gateway.observability.tracing.context",
    "gateway.observability.tracing.otlp",
    "gateway.observability.tracing.record",
    "gateway.observability.tracing.sampler",
    "gateway.observability.tracing.span",
    "gateway.observability.tracing.tracer",
)
GROUP: Final = "switchyard_dataplane"
SHARED: Final = f"{GROUP}__mypyc"  # the shared library: a top-level module name
# The `gateway` package (this module lies in gateway/native/); the build goes beside it.
PACKAGE_DIR: Final = Path(__file__).resolve().parent.parent
OUTPUT_DIR: Final = PACKAGE_DIR / "_compiled"
MANIFEST: Final = "manifest.json"
ENV: Final = "SWITCHYARD_COMPILED"
STALE: Final = "sources changed since `switchyard compile`; run it again"


@dataclass(frozen=True)
class CompiledStatus:
    """What the process runs: `active` true for the compiled modules, and why (not)."""

    active: bool
    reason: str
    required: bool = False  # SWITCHYARD_COMPILED=require: `serve` must not run without

    @property
    def label(self) -> str:
        return "compiled" if self.active else "python"

    @property
    def stale(self) -> bool:
        """Built, but for other sources: someone edited the request path since."""
        return self.reason == STALE


def source_path(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def compiled_path(module: str, suffix: str) -> Path:
    """Where a module's extension file lies in a build, relative to its root."""
    parts = module.split(".")
    return Path(*parts[:-1], parts[-1] + suffix)


def source_digest() -> str:
    """sha256 over the hot modules' names and source bytes, in a fixed order."""
    digest = hashlib.sha256()
    for module in HOT_MODULES:
        digest.update(module.encode() + b"\0")
        digest.update(source_path(module).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


class _CompiledFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled file for each name in the manifest; None for anything else."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


def check(directory: Path) -> tuple[dict[str, Path] | None, str]:
    """The compiled files to use, or None and the reason they are not used."""
    manifest_file = directory / MANIFEST
    if not manifest_file.exists():
        return None, "not compiled (run `switchyard compile` or `make compile`)"
    try:
        manifest = json.loads(manifest_file.read_text())
        modules: dict[str, str] = manifest["modules"]
        digest: str = manifest["digest"]
        suffix: str = manifest["suffix"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable manifest {manifest_file}: {exc}"
    if suffix not in importlib.machinery.EXTENSION_SUFFIXES:
        return None, f"compiled for another Python ({suffix}); run `switchyard compile`"
    if set(modules) != {*HOT_MODULES, SHARED}:
        return None, "compiled for another module list; run `switchyard compile`"
    try:
        current = source_digest()
    except OSError as exc:
        return None, f"cannot read the sources: {exc}"
    if current != digest:
        return None, STALE
    files = {name: directory / rel for name, rel in modules.items()}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        return None, f"compiled files missing: {', '.join(missing)}"
    return files, f"mypyc, {len(HOT_MODULES)} modules"


def install(directory: Path = OUTPUT_DIR, mode: str | None = None) -> CompiledStatus:
    """Put the finder in front of the import system when the compiled set is usable."""
    mode = (os.environ.get(ENV, "auto") if mode is None else mode).strip().lower()
    required = mode == "require"
    if mode in ("0", "off", "false", "no", "python"):
        return CompiledStatus(False, f"{ENV}={mode}")
    already = [m for m in HOT_MODULES if m in sys.modules]
    if already:
        reason = f"imported before the finder: {', '.join(already)}"
        return CompiledStatus(False, reason, required)
    files, reason = check(directory)
    if files is None:
        return CompiledStatus(False, reason, required)
    sys.meta_path.insert(0, _CompiledFinder(files))
    return CompiledStatus(True, reason, required)
