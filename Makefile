# Two entry points for a fresh clone: `make test` and `make demo`.
# Both create .venv, install torch pinned (the CPU wheel here; an unpinned torch
# pulls gigabytes of CUDA packages), then the project in editable mode.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.ddmr-installed

.PHONY: install test test-browser demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# the browser tests (tests/browser) need Chromium: `make test-browser` runs them
test: install
	$(PY) -m pytest -q tests --ignore=tests/browser

# ddmr serve's page in a real, headless browser: the system's Chromium and chromedriver
# (Debian: apt-get install chromium chromium-driver); skipped, with the reason, without them
test-browser: install
	$(PY) -m pip install -q -e ".[test,browser]"
	$(PY) -m pytest -q -rs tests/browser

demo: install
	$(VENV)/bin/ddmr demo --out demo_out

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
