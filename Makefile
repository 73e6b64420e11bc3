# Two set-up commands for a fresh clone (see README):  make demo  |  make test
PY ?= python3

.PHONY: install demo test bench-engine

install:
	$(PY) -m pip install -q -e ".[dev]"

demo: install
	fastretrain demo

test: install
	$(PY) -m pytest -q

bench-engine: install
	$(PY) benchmarks/engine_overhead.py
