# One entry point for people and CI. `make demo` and `make test` work on a fresh clone:
# each creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check lint bench bench-quick clean

$(BIN)/syncd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/syncd

demo: $(BIN)/syncd  ## install, then run the daemon against the embedded sandbox with sample data
	$(BIN)/syncd demo

test: $(BIN)/syncd  ## install, then run the whole test suite
	$(BIN)/python -m pytest

lint: $(BIN)/syncd
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

bench: $(BIN)/syncd
	$(BIN)/python -m bench

bench-quick: $(BIN)/syncd
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache syncd-demo
