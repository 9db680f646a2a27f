# Fieldlink: `make run` starts HQ plus a local agent; `make test` runs the suite.
# Both create and fill .venv themselves.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every package version `make run` and `make test` install, pinned by `make lock`
# (pyproject.toml keeps only lower bounds, for users who install the package).
# LOCK= (empty) installs the newest releases instead: see `make test-latest`.
LOCK ?= constraints.txt
PIP := $(BIN)/python -m pip install --quiet $(if $(LOCK),--constraint $(LOCK))
# The web console's front-end libraries, from npm by the committed lock file.
NODE_STAMP := node_modules/.installed
DEMO_DIR ?= .demo
# `make run` listens on BIND (this machine only by default) at these ports.
BIND ?= 127.0.0.1
HTTP_PORT ?= 8443
SSH_PORT ?= 8022

# `make test` runs the suite on this many xdist workers (0: serially, in one process).
TEST_WORKERS ?= 3

.PHONY: run test test-latest lock fuzz bench lint format venv clean i18n

# pip, the build backend and then the project with its dev extras, all at the
# locked versions; the project is built without isolation so that its build
# backend is the locked one too.
$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Fieldlink needs Python 3.11 or newer"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) --upgrade hatchling editables
	$(PIP) --upgrade --no-build-isolation -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || \
		{ echo "npm is needed for the web console's libraries (e.g. apt-get install npm)"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

venv: $(STAMP) $(NODE_STAMP)

run: $(STAMP) $(NODE_STAMP)
	$(BIN)/fieldlink demo --data-dir $(DEMO_DIR) --http $(BIND):$(HTTP_PORT) --ssh $(BIND):$(SSH_PORT)

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The suite against the newest releases of everything (the lock ignored), in a
# venv of its own, so that the next upstream break shows here before a user meets it.
test-latest:
	$(MAKE) test VENV=.venv-latest LOCK=

# Refresh constraints.txt to the newest releases that pyproject.toml allows, for
# every platform and Python 3.11+; then run `make test` and note it in CHANGELOG.md.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv>=0.5'
	printf 'pip\nhatchling>=1.21\neditables\n' | $(BIN)/uv pip compile --quiet --upgrade --universal \
		--python-version 3.11 --all-extras --custom-compile-command 'make lock' \
		pyproject.toml - -o constraints.txt

# Fuzz the API: schemathesis against a real HQ's /api/openapi.json with an admin
# token (no 5xx, every status code documented, responses match their schemas).
# Bounded by FUZZ_EXAMPLES test cases per operation and phase, and by FUZZ_TIME
# seconds when set; FUZZ_SEED repeats a run, FUZZ_DB picks the database.
FUZZ_EXAMPLES ?= 25
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m tests.fuzz.run

# Refresh the console's message catalogs after changing its strings.
i18n: $(STAMP)
	$(BIN)/pybabel extract -F server/console/babel.cfg -o server/console/locale/messages.pot \
		-k N_ --no-location --sort-output --project=Fieldlink server/console
	$(BIN)/pybabel update -i server/console/locale/messages.pot -d server/console/locale \
		--no-fuzzy-matching --ignore-obsolete

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .venv .venv-latest node_modules .pytest_cache .mypy_cache .ruff_cache
