# fedrecord: the two README commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint vectors bench soak conformance clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

## demo: three nodes on loopback play the main story (`fedrecord demo --offline`: the core alone)
demo: $(STAMP)
	$(BIN)/fedrecord demo

## lint: ruff on everything, mypy --strict on the sans-I/O core, mypy on the adapters
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy --strict src/fedrecord/core
	$(BIN)/mypy src

## test: lint, then the whole suite (pytest exit code 5, "no tests", is a failure)
test: lint
	$(BIN)/python -m pytest -q

## vectors: regenerate spec/vectors from fixed seeds (deterministic)
vectors: $(STAMP)
	$(BIN)/python -m fedrecord.vectors spec/vectors

## bench: benchmarks printing ratios against baselines measured in the same run
bench: $(STAMP)
	$(BIN)/python benchmarks/core.py --json bench-results.json
	$(BIN)/python benchmarks/node.py --json bench-node.json
	$(BIN)/python benchmarks/propagation.py --json bench-propagation.json
	$(BIN)/python benchmarks/sync.py --json bench-sync.json
	$(BIN)/python benchmarks/initial_sync.py --json bench-initial-sync.json
	$(BIN)/python benchmarks/web.py --json bench-web.json

## conformance: the conformance suite against the reference node (patient and clinic), started as spec/conformance.md says
conformance: $(STAMP)
	$(BIN)/fedrecord-conformance --launch "$(BIN)/python -m fedrecord.conformance.reference" \
		--launch-peer "$(BIN)/python -m fedrecord.conformance.reference" \
		--junit conformance-junit.xml --json conformance.json

## soak: the crash-safety test with 100 kills of each kind instead of 20
soak: $(STAMP)
	FEDRECORD_SOAK=1 $(BIN)/python -m pytest -q tests/test_crash_safety.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
