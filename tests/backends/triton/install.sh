#!/usr/bin/env bash
# Create .venv-triton: NVIDIA Triton (from nvidia-pytriton) on the CPU, for the
# real-Triton test stage.
#
#   bash tests/backends/triton/install.sh      (make triton-env runs it)
#
# Idempotent and cached: a stamp holding the hash of this script and requirements.txt
# says the environment is complete, so a second run returns at once; change either file
# and the next run installs again on top of what is there.
# Any failure exits non-zero: the stage must fail loudly, never skip, when an install
# breaks. The one exception is a platform nvidia-pytriton has no wheel for (support.py
# says which), where it prints the reason, installs nothing and exits 0; the tests then
# skip with that same reason.
#
# Environment: PYTHON (default python3) makes the venv; TRITON_VENV (default .venv-triton);
# PIP_* variables reach pip unchanged.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
venv="${TRITON_VENV:-.venv-triton}"
stamp="$venv/.installed-stamp"
want="$(cat "$here/install.sh" "$here/requirements.txt" | sha256sum | cut -d' ' -f1)"

rc=0
reason="$("$python" "$here/support.py")" || rc=$?
if [[ $rc == 3 ]]; then
  echo "triton-env: not installed: this platform cannot run pytriton: $reason"
  exit 0
elif [[ $rc != 0 ]]; then
  echo "triton-env: $python could not check the platform (exit $rc)" >&2
  exit 1
fi
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  touch "$stamp"  # newer than the inputs again, so make stops asking
  echo "triton-env: $venv is up to date"
  exit 0
fi

started=$SECONDS
echo "triton-env: installing nvidia-pytriton into $venv (first time: about a minute, ~400 MB)"
test -x "$venv/bin/python" || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q -r "$here/requirements.txt"

# Prove the pieces the tests start are there before calling the environment good: the
# pytriton API the server script uses, the tritonserver binary with every library it
# links resolved, and the Python backend stub for this interpreter's version.
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import pathlib
import subprocess
import sys
import sysconfig

import numpy
import pytriton.triton  # noqa: F401

root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
server = root / "bin" / "tritonserver"
if not server.is_file():
    sys.exit(f"triton-env: {server} is missing from the nvidia-pytriton wheel")
missing = [
    line.strip()
    for line in subprocess.run(["ldd", str(server)], capture_output=True, text=True).stdout.splitlines()
    if "not found" in line
]
if missing:
    sys.exit("triton-env: tritonserver cannot load: " + "; ".join(missing))
stub = root / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}"
if not stub.is_dir():
    sys.exit(f"triton-env: no Python backend stub for this Python at {stub}")
libdir = pathlib.Path(sysconfig.get_config_var("LIBDIR"))
libpython = libdir / sysconfig.get_config_var("LDLIBRARY")
if not libpython.exists():
    # The stub loads libpython; a static-only interpreter cannot host Triton's Python backend.
    sys.exit(f"triton-env: {libpython} is missing: build the venv from a shared-libpython Python")
print("triton-env: nvidia-pytriton", md.version("nvidia-pytriton"), "numpy", numpy.__version__)
PY

echo "$want" > "$stamp"
echo "triton-env: ready in $((SECONDS - started)) s"
