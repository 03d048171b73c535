# Two commands: `make demo` and `make test`. Each creates .venv when it is missing and installs into it.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Where pip finds the CPU build of torch 2.13 (empty: the configured indexes / local wheels).
TORCH_INDEX ?=
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)

.PHONY: install test lint demo bench bench-e2e bench-learning clean

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

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check prefix_rft recipe scripts tests
	$(VENV)/bin/ruff format --check prefix_rft recipe scripts tests

demo: install
	$(PY) scripts/cpu_demo.py $(DEMO_ARGS)

bench: install
	$(PY) scripts/bench_core.py --threads 1
	$(PY) scripts/bench_loss.py

bench-e2e: install
	PY=$(PY) bash scripts/bench_e2e_cpu.sh

# the paper's comparison at CPU scale: every arm x 3 seeds through verl's real trainers (~1 h on 2 cores);
# resumable; writes docs/results/cpu_learning.{json,md,*.png}. ARGS=--quick for a smoke size.
bench-learning: install
	$(PY) scripts/bench_learning.py $(ARGS)

clean:
	rm -rf $(VENV)
