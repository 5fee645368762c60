"""`switchyard compile`: build the request path's modules with mypyc (see native/loader.py).

mypyc turns the type-annotated modules into C extension modules: attribute access on
the data plane's own classes becomes a struct load and calls between them direct C
calls. Measured on the bench (same run, full policy): CPU per proxied request down by
about a third. It needs mypy (the `dev` extra) and a C compiler with the Python
headers; without them the gateway runs the same code interpreted (`--if-possible`
says so and exits 0). With them, a build that fails is an error, `--if-possible` or
not: a machine that can compile must not quietly test and serve only the Python path.

The build runs in a child process (setuptools' `setup()` owns its process) in a temp
dir, and the result replaces `gateway/_compiled/` only when complete: the manifest is
written last, so a failed build leaves no half set that the loader would use.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path

from gateway.native.loader import (
    GROUP,
    HOT_MODULES,
    MANIFEST,
    OUTPUT_DIR,
    SHARED,
    check,
    compiled_path,
    source_digest,
)

# mypy settings for the build: the project's own config is not shipped with the package,
# and the third-party libraries without type information are the same as pyproject's.
_MYPY_INI = """\
[mypy]
follow_imports = silent
warn_unused_ignores = False

[mypy-httptools.*,uvloop.*,grpc.*,tritonclient.*,scipy.*,pandas.*,pyarrow.*,evidently.*]
ignore_missing_imports = True
"""

_SETUP = """\
import shutil, sys
import mypyc.build
from setuptools import setup

paths, target, group, config = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4]
lib, objects, runtime = sys.argv[5], sys.argv[6], sys.argv[7]
# mypyc's runtime, with one fix: its bytes slice passes a negative length to
# PyBytes_FromStringAndSize when start > end (b"abc"[2:1] raises SystemError where
# Python gives b""), and the data plane slices bytes at positions from find().
original = mypyc.build.include_dir()
shutil.copytree(original, runtime)
with open(runtime + "/bytes_ops.c") as f:
    source = f.read()
bug = "Py_ssize_t slice_len = endn - startn;"
if bug not in source:
    print("note: mypyc's bytes slice changed; left unpatched", file=sys.stderr)
source = source.replace(bug, "Py_ssize_t slice_len = endn > startn ? endn - startn : 0;")
with open(runtime + "/bytes_ops.c", "w") as f:
    f.write(source)
extensions = mypyc.build.mypycify(
    ["--config-file", config, *paths], opt_level="3", target_dir=target, group_name=group
)
# mypyc.build is itself compiled, so its include_dir() cannot be replaced: point the
# extensions' include paths at the patched copy instead.
for ext in extensions:
    ext.include_dirs = [runtime + d[len(original):] if d.startswith(original) else d
                        for d in ext.include_dirs]
setup(
    name=group,
    ext_modules=extensions,
    script_args=["-q", "build_ext", "--build-lib", lib, "--build-temp", objects],
)
"""


class CompileError(Exception):
    """The build failed; the message says which step and shows the compiler's output."""


def missing_toolchain(
    env: Mapping[str, str] = os.environ, include_dir: Path | None = None
) -> str | None:
    """What this machine lacks to compile at all (mypyc, a C compiler, the Python
    headers), or None when it has everything. Only this decides a fallback to Python:
    a build that fails with the toolchain present is a bug to report, not a platform."""
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypy (with mypyc) is not installed: pip install 'switchyard[dev]'"
    # As setuptools reads it: $CC may carry arguments ("ccache gcc", "gcc -m64").
    cc = shlex.split(env.get("CC", "")) or ["cc"]
    if shutil.which(cc[0], path=env.get("PATH", os.defpath)) is None:
        where = "$CC" if env.get("CC") else "cc"
        return f"no C compiler: {where} ({cc[0]}) not found on PATH"
    headers = include_dir or Path(sysconfig.get_paths()["include"])
    if not (headers / "Python.h").is_file():
        return f"no Python headers ({headers}/Python.h): install python3-dev or equivalent"
    return None


def build(
    output: Path = OUTPUT_DIR,
    *,
    verbose: bool = False,
    modules: tuple[str, ...] = HOT_MODULES,
    root: Path | None = None,
    env: Mapping[str, str] = os.environ,
) -> dict[str, object]:
    """Compile `modules` (found under `root`, by default the directory that holds the
    `gateway` package) into `output`; returns the manifest written. The manifest's
    digest is of HOT_MODULES: other `modules` are for tests of the build itself."""
    if root is None:
        root = output.resolve().parent.parent
    digest = source_digest()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="switchyard-compile-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "mypy.ini").write_text(_MYPY_INI)
        (tmp / "setup.py").write_text(_SETUP)
        paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in modules]
        lib = tmp / "lib"
        cmd = [
            sys.executable,
            str(tmp / "setup.py"),
            ",".join(paths),
            str(tmp / "c"),
            GROUP,
            str(tmp / "mypy.ini"),
            str(lib),
            str(tmp / "objects"),
            str(tmp / "runtime"),
        ]
        proc = subprocess.run(
            cmd,
            cwd=root,
            env={**env, "MYPY_CACHE_DIR": str(tmp / "mypy-cache")},
            stdout=None if verbose else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout or "").splitlines()[-30:])
            raise CompileError(f"mypyc build failed (exit {proc.returncode}):\n{tail}")
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        built: dict[str, str] = {}
        for name in (*modules, SHARED):
            rel = compiled_path(name, suffix)
            if not (lib / rel).exists():
                raise CompileError(f"mypyc built no {rel} (is {suffix} this Python's?)")
            built[name] = str(rel)
        staging = output.with_name(output.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        for file in built.values():
            (staging / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib / file, staging / file)
    manifest: dict[str, object] = {
        "digest": digest,
        "suffix": suffix,
        "modules": built,
        "python": sys.version.split()[0],
        "mypy": _mypy_version(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    return manifest


def _mypy_version() -> str:
    try:
        from mypy.version import __version__
    except ImportError:
        return "?"
    return __version__


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compile",
        help="compile the request path with mypyc (faster; falls back to Python when stale)",
        description=textwrap.dedent(__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--check", action="store_true", help="only say whether the build is usable")
    p.add_argument("--clean", action="store_true", help="remove the compiled modules")
    p.add_argument(
        "--if-possible",
        action="store_true",
        help="exit 0 with a warning when mypyc, a C compiler or the Python headers are "
        "missing; a build that fails with them present still fails (make compile uses it)",
    )
    p.add_argument(
        "--toolchain",
        action="store_true",
        help="only say whether this machine can compile (exit 0) or what it lacks (exit 1)",
    )
    p.add_argument(
        "--if-stale", action="store_true", help="do nothing when the build matches the sources"
    )
    p.add_argument("--verbose", action="store_true", help="show mypyc's and the compiler's output")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    return run_compile(args)


def run_compile(
    args: argparse.Namespace,
    *,
    output: Path = OUTPUT_DIR,
    env: Mapping[str, str] = os.environ,
    include_dir: Path | None = None,
    modules: tuple[str, ...] = HOT_MODULES,
    root: Path | None = None,
) -> int:
    """The command; the keywords are where tests point it at their own machine parts."""
    if args.clean:
        shutil.rmtree(output, ignore_errors=True)
        print(f"removed {output}")
        return 0
    if args.check:
        files, reason = check(output)  # the loader's own rules
        print(f"{'usable' if files else 'not usable'}: {reason}")
        return 0 if files else 1
    missing = missing_toolchain(env, include_dir)
    if args.toolchain:
        print(f"switchyard compile: {missing or 'mypyc, a C compiler and the Python headers'}")
        return 1 if missing else 0
    if args.if_stale:
        files, reason = check(output)
        if files is not None:
            print(f"switchyard compile: up to date ({reason})")
            return 0
    if missing is not None:
        print(f"switchyard compile: {missing}", file=sys.stderr)
        if args.if_possible:
            print("switchyard compile: the gateway will run its pure-Python code", file=sys.stderr)
            return 0
        return 1
    try:
        manifest = build(output, verbose=args.verbose, modules=modules, root=root, env=env)
    except CompileError as exc:
        # Never tolerated: the toolchain is here, so this is a bug in the build or the
        # code, and falling back would let `make test` pass on the Python path alone.
        print(f"switchyard compile: {exc}", file=sys.stderr)
        print("switchyard compile: the toolchain is present, so this is an error", file=sys.stderr)
        return 1
    print(
        f"compiled {len(modules)} modules into {output} in "
        f"{manifest['build_seconds']} s (mypy {manifest['mypy']}, Python {manifest['python']})"
    )
    return 0
