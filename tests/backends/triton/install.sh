#!/usr/bin/env bash
# Create .venv-triton: NVIDIA Triton (from nvidia-pytriton) on the CPU, for the
# real-Triton test stage.
#
#   bash tests/backends/triton/install.sh      (make triton-env runs it)
#
# Cached, fails loudly, skips (saying why) only on a platform nvidia-pytriton has no
# wheel for: see tests/backends/make_venv.sh.
# Environment: PYTHON (default python3) makes the venv; TRITON_VENV (default .venv-triton);
# PIP_* variables reach pip unchanged.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"

# Prove the pieces the tests start are there before calling the environment good: the
# pytriton API the server script uses, the tritonserver binary with every library it
# links resolved, and the Python backend stub for this interpreter's version.
verify() {
  "$1/bin/python" - <<'PY'
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
}

source "$here/../make_venv.sh"
make_venv "$here" "${TRITON_VENV:-.venv-triton}" triton-env pytriton nvidia-pytriton \
  "first time: about a minute, ~400 MB"
