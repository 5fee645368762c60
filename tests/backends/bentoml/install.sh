#!/usr/bin/env bash
# Create .venv-bentoml: BentoML and scikit-learn, for the real-BentoML test stage.
#
#   bash tests/backends/bentoml/install.sh      (make bentoml-env runs it)
#
# Cached, fails loudly, skips (saying why) only on a platform the packages publish
# nothing for: see tests/backends/make_venv.sh.
# Environment: PYTHON (default python3) makes the venv; BENTOML_VENV (default
# .venv-bentoml); PIP_* variables reach pip unchanged.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"

# Prove the service module imports (bentoml, numpy, scikit-learn together) and the
# `bentoml` command the tests run is there, before calling the environment good.
verify() {
  test -x "$1/bin/bentoml" || { echo "bentoml-env: $1/bin/bentoml is missing" >&2; exit 1; }
  BENTOML_DO_NOT_TRACK=true BENTOML_HOME="$1/.bentoml-home" "$1/bin/python" - "$here" <<'PY'
import importlib.metadata as md
import sys

sys.path.insert(0, sys.argv[1])
import fraud_service  # noqa: E402,F401

print("bentoml-env: bentoml", md.version("bentoml"), "scikit-learn", md.version("scikit-learn"))
PY
}

source "$here/../make_venv.sh"
make_venv "$here" "${BENTOML_VENV:-.venv-bentoml}" bentoml-env BentoML \
  "bentoml and scikit-learn" "first time: about a minute"
