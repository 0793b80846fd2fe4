# Two commands: `make run` (set up, then run the default workflow) and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CORES ?= all
BIN := $(VENV)/bin

.PHONY: setup run test lint clean

$(BIN)/bpfree: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

setup: $(BIN)/bpfree  ## create .venv with torch ($(TORCH)) and the package

run: setup  ## the default workflow (digits; bp, mf, ff, fa, dfa and local losses on an MLP, bp, CaFo, fa, dfa and local losses on a CNN): tables and plots under results/
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: setup  ## the test suite
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

lint: setup  ## ruff (its rules: pyproject.toml's [tool.ruff.lint]) on the code, and snakemake --lint on the workflow
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

clean:
	rm -rf results resources logs benchmarks .snakemake
