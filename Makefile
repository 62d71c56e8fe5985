# Two commands set up everything on a fresh machine: `make app` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8866
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install app course test test-fast bench reproduce chromium clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# A page that closes asks Voila to shut its kernel down. A kernel left without any page (a crashed
# tab, a lost connection) is shut down, with its worker process, after CULL_IDLE_SECONDS idle.
CULL_IDLE_SECONDS ?= 120
CULL_FLAGS = --MappingKernelManager.cull_idle_timeout=$(CULL_IDLE_SECONDS) --MappingKernelManager.cull_interval=60

app: install
	$(BIN)/voila notebooks/explorer.ipynb --no-browser --port=$(PORT) --Voila.ip=127.0.0.1 $(CULL_FLAGS)

course: install
	$(BIN)/voila notebooks --no-browser --port=$(PORT) --Voila.ip=127.0.0.1 $(CULL_FLAGS)

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
