#!/usr/bin/env bash
# Create .venv-bentoml: BentoML and scikit-learn, for the real-BentoML test stage.
#
#   bash tests/backends/bentoml/install.sh      (make bentoml-env runs it)
#
# Idempotent and cached: a stamp holding the hash of this script and requirements.txt
# says the environment is complete, so a second run returns at once; change either file
# and the next run installs again on top of what is there.
# Any failure exits non-zero: the stage must fail loudly, never skip, when an install
# breaks. The one exception is a platform the packages publish nothing for (support.py
# says which), where it prints the reason, installs nothing and exits 0; the tests then
# skip with that same reason.
#
# Environment: PYTHON (default python3) makes the venv; BENTOML_VENV (default
# .venv-bentoml); PIP_* variables reach pip unchanged.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
venv="${BENTOML_VENV:-.venv-bentoml}"
stamp="$venv/.installed-stamp"
want="$(cat "$here/install.sh" "$here/requirements.txt" | sha256sum | cut -d' ' -f1)"

rc=0
reason="$("$python" "$here/support.py")" || rc=$?
if [[ $rc == 3 ]]; then
  echo "bentoml-env: not installed: this platform cannot run BentoML: $reason"
  exit 0
elif [[ $rc != 0 ]]; then
  echo "bentoml-env: $python could not check the platform (exit $rc)" >&2
  exit 1
fi
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  touch "$stamp"  # newer than the inputs again, so make stops asking
  echo "bentoml-env: $venv is up to date"
  exit 0
fi

started=$SECONDS
echo "bentoml-env: installing bentoml and scikit-learn into $venv (first time: about a minute)"
test -x "$venv/bin/python" || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q -r "$here/requirements.txt"

# Prove the service module imports (bentoml, numpy, scikit-learn together) and the
# `bentoml` command the tests run is there, before calling the environment good.
test -x "$venv/bin/bentoml" || { echo "bentoml-env: $venv/bin/bentoml is missing" >&2; exit 1; }
BENTOML_DO_NOT_TRACK=true BENTOML_HOME="$venv/.bentoml-home" "$venv/bin/python" - "$here" <<'PY'
import importlib.metadata as md
import sys

sys.path.insert(0, sys.argv[1])
import fraud_service  # noqa: E402,F401

print("bentoml-env: bentoml", md.version("bentoml"), "scikit-learn", md.version("scikit-learn"))
PY

echo "$want" > "$stamp"
echo "bentoml-env: ready in $((SECONDS - started)) s"
