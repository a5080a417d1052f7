# aekit: build, test, benchmark and demo.
#   make test    install (when needed) and run the whole test suite
#   make demo    install and run the example pipeline to a verdict
#   make bench   install and print the benchmark ratios (BENCH_DEVICE=auto|cpu|cuda: where
#                the models run; auto: CUDA when present)
#   make stress  install and run the no-hang stress loop (slow: 10-40 minutes; not in make test)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aekit-installed

.PHONY: install test bench stress demo clean distclean

install: $(STAMP)

# The tested set of versions is pinned in constraints.txt; pyproject.toml holds the ranges.
$(STAMP): pyproject.toml setup.cfg constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	touch $@

test: install
	$(PY) -m pytest -q tests

BENCH_DEVICE ?= auto
bench: install
	$(PY) bench/run_all.py --device $(BENCH_DEVICE)

stress: install
	$(PY) bench/stress_batch.py

demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(MAKE) -C examples demo

clean:
	$(MAKE) -C examples clean || true
	rm -rf build *.egg-info lib/*.egg-info .pytest_cache

distclean: clean
	rm -rf $(VENV)
