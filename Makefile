# hpc-broker: the few targets a newcomer needs. Run as root on Debian (apt installs Slurm).
#   make up     - install what is missing, start real Slurm + the local stack, print the API address
#   make test   - the whole suite: lint, template checks, unit, functional, integration (real Slurm)
#   make contract - our pcluster adapter against the real pcluster.lib (own venv; also in make test)
#   make demo   - up, submit a job through the HTTP API, poll it to completion, tear down
#   make down   - stop the local stack and Slurm
#   make fuzz   - schemathesis against the API for ~10 minutes, with stateful links
#   make bench  - benchmarks on the local stack, each beside its baseline (last: a 10,000-job burst)
#   make chaos  - 10,000 jobs under injected faults, checked against Slurm (lost, duplicates, events)
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
SAM_VENV := .venv-sam
CONTRACT_VENV := .venv-contract
BIN := $(VENV)/bin
SLURM := scripts/slurm.sh
SLURM_ENV := $(or $(HPCB_SLURM_PREFIX),/var/tmp/hpc-broker/slurm)/env
API_PORT ?= 8080
MOTO_PORT ?= 5000
RUN_DIR ?= .run
STACK := $(BIN)/python -m broker.local --run-file $(RUN_DIR)/local-stack.json
export SAM_CLI_TELEMETRY := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup system-deps test-deps venv sam up down status demo test lint typecheck template build unit \
        functional integration contract contract-venv fuzz bench bench-burst chaos chaos-test lock clean

setup: system-deps venv sam

system-deps:
	scripts/install-system-deps.sh

venv: $(VENV)/.installed
$(VENV)/.installed: requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements/dev.lock
	touch $@

# The SAM CLI pins its own boto3/click/pydantic: it lives in a virtual environment of its own.
sam: $(SAM_VENV)/.installed
$(SAM_VENV)/.installed: requirements/sam.lock
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install -q --disable-pip-version-check -r requirements/sam.lock
	touch $@

# The real ParallelCluster library (aws-parallelcluster pins its own boto3, PyYAML, aws-cdk):
# an environment of its own for the contract test.
contract-venv: $(CONTRACT_VENV)/.installed
$(CONTRACT_VENV)/.installed: requirements/contract.lock
	$(PYTHON) -m venv $(CONTRACT_VENV)
	$(CONTRACT_VENV)/bin/pip install -q --disable-pip-version-check -r requirements/contract.lock
	touch $@

# Our ClusterProvider adapter against the real pcluster.lib and a moto server (tests/contract).
contract: contract-venv
	PYTHONPATH=. $(CONTRACT_VENV)/bin/pytest tests/contract -q -p no:cacheprovider

# Starts the stack in the background (log: .run/local-stack.log) and prints its banner.
up: system-deps venv
	@$(SLURM) up
	@scripts/local-user.sh   # hpcb-dev: the non-root user the local caller is mapped to
	mkdir -p $(RUN_DIR)
	log=$(RUN_DIR)/local-stack.log
	if $(STACK) status >/dev/null 2>&1; then
	  echo "The local stack is already running:"
	else
	  setsid nohup $(STACK) up --api-port $(API_PORT) --moto-port $(MOTO_PORT) --map-user hpcb-dev \
	    --slurm-env $(SLURM_ENV) > $$log 2>&1 < /dev/null &
	  pid=$$!
	  for _ in $$(seq 300); do
	    grep -q '^Stop with' $$log && break
	    kill -0 $$pid 2>/dev/null || { cat $$log; exit 1; }
	    sleep 0.2
	  done
	fi
	sed -n '/local stack is up/,/^Stop with/p' $$log | grep -v '^Stop with'
	echo "Stop it with: make down"

down:
	-[ -x $(BIN)/python ] && $(STACK) down
	$(SLURM) down

status:
	$(SLURM) status
	$(STACK) status

demo: system-deps venv
	$(SLURM) up
	scripts/local-user.sh
	$(BIN)/python -m broker.demo --slurm-env $(SLURM_ENV)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/vermin -t=3.7- --eval-annotations --no-parse-comments --no-tips --violations -q broker/agent/hpcb_agent.py

template: venv sam
	$(BIN)/cfn-lint template.yaml
	$(SAM_VENV)/bin/sam validate --lint --region us-east-1 --template template.yaml
	$(MAKE) --no-print-directory build

# sam build without a container: the functions' runtime (python3.12) must be on PATH; pip
# fetches wheels for each function's architecture. It builds from a copy of the tracked code
# (broker, workers, template.yaml; working-tree changes included): built from the checkout,
# every function would carry .venv-sam and the tests. 24 s here with pip's cache warm.
# Deploy with: sam deploy --guided --template-file .aws-sam/build/template.yaml
SAM_SRC := .aws-sam/src
# The first python3.12 that runs (a pyenv shim may exist without selecting that version).
PY312 ?= $(shell for p in $$(command -v python3.12) $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
  "$$p" -c '' 2>/dev/null && echo "$$p" && break; done)
build: sam
	[ -n "$(PY312)" ] || { echo "sam build needs python3.12 (the functions' runtime) on PATH"; exit 1; }
	export PATH="$(dir $(PY312)):$$PATH"
	rm -rf $(SAM_SRC) && mkdir -p $(SAM_SRC)
	git ls-files -co --exclude-standard template.yaml broker workers requirements/app.lock \
	  | tar -cf - -T - | tar -xf - -C $(SAM_SRC)
	cd $(SAM_SRC) && $(CURDIR)/$(SAM_VENV)/bin/sam build --build-dir $(CURDIR)/.aws-sam/build \
	  --manifest requirements/app.lock --parallel

unit: venv
	$(BIN)/pytest tests/unit -q

functional: venv
	$(BIN)/pytest tests/functional -q

integration: system-deps venv
	$(SLURM) up
	scripts/local-user.sh
	source $(SLURM_ENV) && $(BIN)/pytest tests/integration -q

# The whole suite. REQUIRE_SLURM=1 (set by .ci/run) turns a missing Slurm into a failure.
# Test-only system packages: everything make up needs, plus Chromium for the Swagger UI test.
test-deps:
	scripts/install-system-deps.sh --with-browser

test: test-deps venv sam lint template
	$(SLURM) up
	scripts/local-user.sh
	source $(SLURM_ENV) && $(BIN)/pytest tests -q -m "not chaos" --ignore=tests/contract
	# The bounded chaos run on its own: it restarts slurmctld, which other tests must not meet.
	source $(SLURM_ENV) && $(BIN)/pytest tests -q -m chaos
	$(MAKE) --no-print-directory contract

# The API against its OpenAPI document for FUZZ_SECONDS (default 600), every phase including
# stateful links (job ids from POSTs feed GET, DELETE and output); new cases each run (SEED=n
# repeats one). `make test` runs a bounded ~1,000 cases (tests/functional/test_fuzz_api.py).
fuzz: venv
	$(BIN)/python -m tests.functional.fuzz_harness --max-time $(or $(FUZZ_SECONDS),600) \
	  --max-examples 1000 $(if $(SEED),--seed $(SEED))

bench: system-deps venv
	$(SLURM) up
	source $(SLURM_ENV) && $(BIN)/python -m bench.api_latency
	source $(SLURM_ENV) && $(BIN)/python -m bench.clusters
	source $(SLURM_ENV) && $(BIN)/python -m bench.lifecycle
	$(MAKE) --no-print-directory bench-burst

# The 10,000-job burst beside a plain sbatch loop and the one-command-per-job design; its JSON
# line is the last line of `make bench`.
bench-burst: system-deps venv
	$(SLURM) up
	source $(SLURM_ENV) && $(BIN)/python -m bench.burst --jobs $(or $(JOBS),10000)

# 10,000 jobs under injected faults (bench/chaos.py): lost, duplicates and notifications checked
# against Slurm's own job list; its JSON line is the last line. JOBS=... for another size.
chaos: system-deps venv
	$(SLURM) up
	source $(SLURM_ENV) && $(BIN)/python -m bench.chaos --jobs $(or $(JOBS),10000)

# The bounded chaos run (2,000 jobs, every fault kind, a few minutes) as tests; `make test` runs
# it too, as a step of its own.
chaos-test: system-deps venv
	$(SLURM) up
	scripts/local-user.sh
	source $(SLURM_ENV) && $(BIN)/pytest tests -q -m chaos

# Re-pin: regenerate the lock files from requirements/*.in (then commit them).
lock:
	rm -rf /tmp/hpcb-lock && $(PYTHON) -m venv /tmp/hpcb-lock
	/tmp/hpcb-lock/bin/pip install -q -r requirements/app.in
	/tmp/hpcb-lock/bin/pip freeze --exclude-editable > requirements/app.lock
	/tmp/hpcb-lock/bin/pip install -q -r requirements/dev.in
	/tmp/hpcb-lock/bin/pip freeze --exclude-editable > requirements/dev.lock
	rm -rf /tmp/hpcb-lock && $(PYTHON) -m venv /tmp/hpcb-lock
	/tmp/hpcb-lock/bin/pip install -q -r requirements/contract.in
	/tmp/hpcb-lock/bin/pip freeze --exclude-editable > requirements/contract.lock

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
