# refbus: `make demo` sets up and runs the system on the embedded default; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo up test test-unit test-integration test-faults soak lint schema bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/refbus demo

up: $(STAMP)
	$(BIN)/refbus up

test: $(STAMP) lint
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

test-faults: $(STAMP)
	$(BIN)/pytest -q tests/faults

# The fault suite with a minute of steady load around every fault instead of two seconds.
soak: $(STAMP)
	REFBUS_FAULT_LOAD_SECONDS=$${REFBUS_FAULT_LOAD_SECONDS:-60} $(BIN)/pytest -q tests/faults

lint: $(STAMP)
	$(BIN)/ruff check .

# Under 15 minutes on 2 cores; writes bench/results/latest.json and latest.png.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/python bench/run.py

schema: $(STAMP)
	$(BIN)/refbus schema

clean:
	rm -rf $(VENV) .refbus .pytest_cache .ruff_cache *.egg-info
