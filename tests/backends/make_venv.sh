# Build one real-backend stage's venv; sourced by tests/backends/<stage>/install.sh.
#
#   make_venv STAGE_DIR VENV LABEL BACKEND PACKAGES NOTE
#
# STAGE_DIR holds install.sh, requirements.txt and support.py; VENV is the venv to build
# (relative to the repository root); LABEL prefixes every message ("triton-env");
# BACKEND and PACKAGES name what cannot run here and what gets installed; NOTE says how
# long the first install takes. The caller defines the hook `verify VENV` (prove the
# environment works; any failure must exit non-zero) and may define `repair VENV` (runs
# after pip, before verify).
#
# Idempotent and cached: a stamp holding the hash of install.sh, requirements.txt and
# this file says the environment is complete, so a second run returns at once; change
# any of them and the next run installs again on top of what is there (pip keeps what
# still fits). Any failure exits non-zero: a stage must fail loudly, never skip, when an
# install breaks. The one exception is a platform the packages publish nothing for
# (support.py says which), where it prints the reason, installs nothing and returns 0;
# the tests then skip with that same reason.
#
# Environment: PYTHON (default python3) makes the venv; PIP_* variables reach pip unchanged.

make_venv() {
  local here="$1" venv="$2" label="$3" backend="$4" packages="$5" note="$6"
  local stage python stamp want started rc=0 reason
  stage="$(basename "$here")"
  cd "$here/../../.."
  python="${PYTHON:-python3}"
  stamp="$venv/.installed-stamp"
  want="$(cat "$here/install.sh" "$here/requirements.txt" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

  # -m from the repository root: support.py imports tests/backends/platforms.py.
  reason="$("$python" -m "tests.backends.$stage.support")" || rc=$?
  if [[ $rc == 3 ]]; then
    echo "$label: not installed: this platform cannot run $backend: $reason"
    return 0
  elif [[ $rc != 0 ]]; then
    echo "$label: $python could not check the platform (exit $rc)" >&2
    exit 1
  fi
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
    touch "$stamp"  # newer than the inputs again, so make stops asking
    echo "$label: $venv is up to date"
    return 0
  fi

  started=$SECONDS
  echo "$label: installing $packages into $venv ($note)"
  test -x "$venv/bin/python" || "$python" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check)
  "${pip[@]}" install -q --upgrade pip
  "${pip[@]}" install -q -r "$here/requirements.txt"
  if declare -F repair >/dev/null; then
    repair "$venv"
  fi
  verify "$venv"

  echo "$want" > "$stamp"
  echo "$label: ready in $((SECONDS - started)) s"
}
