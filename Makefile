# Everyday commands; each is one line of shell you can also type yourself.
PY := .venv/bin/python
export DIP_DATA_ROOT ?= $(abspath ../shared/datasets)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: setup test test-fast lint format bench

setup:  ## .venv with the project, its test tools and the linters
	bash scripts/setup

test:  ## the whole suite (what CI runs after lint)
	$(PY) -m pytest

test-fast:  ## everything but the slow science checks and the multi-node cluster suite
	$(PY) -m pytest -m "not slow and not cluster"

lint:  ## ruff (lint and format check) and mypy, as CI runs them
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format:  ## rewrite files the way `lint` wants them
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench:  ## CPU-sized throughput and resume benchmarks; they print their figures
	$(PY) -m bench.suite --device cpu --quick
	$(PY) -m bench.resume
