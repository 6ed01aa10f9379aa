# Two entry points: `make demo` and `make test`. Both create .venv when absent and are idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first, pinned: this CPU build is what the machines here have; an unpinned torch pulls CUDA wheels.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv torch install-test install-demo test lint demo bench table clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

torch: venv
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"

$(VENV)/.installed-test: setup.cfg pyproject.toml | torch
	$(PIP) install -e ".[test]"
	touch $@

$(VENV)/.installed-demo: setup.cfg pyproject.toml | torch
	$(PIP) install -e ".[test,bench]"
	touch $@

install-test: $(VENV)/.installed-test
install-demo: $(VENV)/.installed-demo

lint: install-test
	$(VENV)/bin/ruff check easyedit_kne tests scripts

test: install-test lint
	$(VENV)/bin/pytest -q -ra tests

demo: install-demo
	$(PY) scripts/demo.py

bench: install-demo
	$(PY) scripts/bench_speed.py

# docs/knowedit-smollm2.md and README.md's table, from the committed runs under benchmarks/ only (measures nothing)
table: install-demo
	$(PY) -m easyedit_kne compare benchmarks/smollm2-135m/test --markdown docs/knowedit-smollm2.md --readme README.md

clean:
	rm -rf $(VENV) build *.egg-info
