# gossipfl developer loop. Two commands matter on a fresh machine:
#   make demo   create .venv, install, run the default simulation
#   make test   the whole suite: ruff, mypy (strict), docs build (strict), pytest
# Needs: python3 (3.11+) with venv, gcc and libgmp-dev (py-libp2p builds fastecdsa).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: all install demo test test-fast test-slow lint format typecheck bench docs clean constraints

all: test

# One install step, re-run when the dependency spec changes. constraints.txt pins the
# CPU build of torch (a bare `torch` would pull several GB of CUDA packages) and the
# versions CI was green with.
$(STAMP): pyproject.toml constraints.txt $(wildcard tests/js/package-lock.json)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install --quiet -e '.[dev,torch]'
	@# The multi-host test builds network namespaces with iproute2's `ip` (CI runs as root).
	@command -v ip >/dev/null || apt-get install -y -qq iproute2 >/dev/null 2>&1 \
		|| echo "note: iproute2 not installed; the network-namespace test will be skipped"
	@# The js-libp2p interoperability tests use the packages pinned in tests/js.
	@if command -v npm >/dev/null && test -f tests/js/package-lock.json; then \
		npm ci --prefix tests/js --no-audit --no-fund --silent; \
		else echo "note: npm not found; the js-libp2p interoperability tests will be skipped"; fi
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/gossipfl simulate

# The suite starts hundreds of Python processes (peers, shards, the docs' commands). Where
# PYTHONDONTWRITEBYTECODE is set (CI machines often set it), none of them caches its
# bytecode, so each compiled the whole package again (~0.15 s a start); compileall writes
# the cache regardless, and they read it (a stale entry is just recompiled, as before).
#
# Two passes. The tests not marked `network` (most of them, CPU-bound: codecs, rules,
# the protocol core, in-process simulations) run on every core (pytest-xdist). The
# `network` ones then run one at a time, as before: their peers are real processes on
# real sockets with real deadlines, and must not share the machine with another test.
# (Exit status 5, "no tests collected", is fine: PYTEST_ARGS may select one pass only.)
test: install lint typecheck docs
	$(PY) -m compileall -q gossipfl >/dev/null
	$(BIN)/pytest -m "not slow and not network" -n auto --durations=10 $(PYTEST_ARGS) \
		|| test $$? -eq 5
	$(BIN)/pytest -m "not slow and network" --durations=25 $(PYTEST_ARGS) || test $$? -eq 5

test-fast: install
	$(BIN)/pytest -m "not slow and not network" -x $(PYTEST_ARGS)

test-slow: install
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check gossipfl tests experiments examples docs/hooks
	$(BIN)/ruff format --check gossipfl tests experiments examples docs/hooks

format: install
	$(BIN)/ruff format gossipfl tests experiments examples docs/hooks
	$(BIN)/ruff check --fix gossipfl tests experiments examples docs/hooks

typecheck: install
	$(BIN)/mypy

# Compiled first for the same reason as `test`: a sharded run's fork server imports
# gossipfl inside the measured time.
bench: install
	$(PY) -m compileall -q gossipfl >/dev/null
	@for script in experiments/benchmarks/*.py; do \
		echo "== $$script"; $(PY) $$script || exit 1; \
	done

# The documentation site, into site/. Strict: a broken link, a missing page or a docstring
# the reference cannot render fails the build. Offline: no fonts, analytics or inventories
# are fetched. `$(BIN)/mkdocs serve` previews it while editing.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist site

# Re-pin constraints.txt to what is installed now (after changing dependencies).
constraints: install
	{ grep '^#' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v -i '^gossipfl'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	touch $(STAMP)
