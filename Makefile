# otsafe: `make run` reproduces the OT-Q paper (experiment, beta sweep, report); `make test` runs
# the checks and the tests.
# Both create the virtual environment .venv and install what they need on first use.

PYTHON ?= python3
VENV ?= .venv
# PyTorch is installed first and pinned: on the project's machines torch==2.13.0 is a CPU build on
# local disk, while an unpinned `torch` would pull a multi-GB CUDA build. Override for a GPU build,
# e.g. `make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
OUT ?= runs/reproduce

.PHONY: install run test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/otsafe reproduce otq --out $(OUT)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -n 2 -q

bench: install
	$(PY) benchmarks/bench_otq.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
