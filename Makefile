# Two commands set up everything on a fresh machine: `make app` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8866
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install app test test-fast bench reproduce chromium clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

app: install
	$(BIN)/voila notebooks/explorer.ipynb --no-browser --port=$(PORT) --Voila.ip=127.0.0.1

chromium:
	bash scripts/ensure-chromium

test: install chromium
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not browser"

bench: install
	$(BIN)/python benchmarks/run.py

reproduce: install
	$(BIN)/resnet-limits reproduce all --quick --out figures

clean:
	rm -rf $(VENV) .pytest_cache .jupyter-test
