# Apprentice — every target builds its own virtual environment on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SERVICE_STAMP := $(VENV)/.stamp-service
ALL_STAMP := $(VENV)/.stamp-all

.PHONY: help demo test run train bench lint fmt clean

help:
	@echo "make demo   - replay exchange + service + paper trading, fully offline"
	@echo "make test   - the whole test suite"
	@echo "make run    - the service against live Bybit mainnet (paper trading)"
	@echo "make train  - teacher -> distillation -> report -> ONNX student in models/"
	@echo "              (one progress bar, log in reports/default/run.log; smoke test in minutes:"
	@echo "              .venv/bin/python -m training report --config configs/report.toml --quick)"
	@echo "make bench  - benchmarks, rewrites BENCHMARKS.md"
	@echo "make lint   - ruff + mypy"

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The service needs only the runtime dependencies (no torch).
$(SERVICE_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

# Tests, training and benchmarks need the train and dev extras too (torch==2.13.0, CPU).
$(ALL_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[train,dev]'
	touch $@ $(SERVICE_STAMP)

demo: $(SERVICE_STAMP)
	$(PY) -m service.demo

run: $(SERVICE_STAMP)
	APPRENTICE_SYMBOLS=$${APPRENTICE_SYMBOLS:-BTCUSDT,ETHUSDT,SOLUSDT} $(PY) -m service

test: $(ALL_STAMP)
	$(PY) -m pytest

train: $(ALL_STAMP)
	$(PY) -m training report --config configs/report.toml

bench: $(ALL_STAMP)
	$(PY) -m bench

lint: $(ALL_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy service training

fmt: $(ALL_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
