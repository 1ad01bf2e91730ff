# Two entry points for a fresh clone: `make test` and `make demo`.
# Both create .venv, install torch pinned (the CPU wheel here; an unpinned torch
# pulls gigabytes of CUDA packages), then the project in editable mode.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.ddmr-installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/ddmr demo --out demo_out

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
