# Every target creates the virtualenv on first use, so a fresh clone needs only `make test`.
# `make run` installs only what the gateway needs (requirements-run.txt, RUN_STAMP); the first
# target that needs more (test, lint, bench...) installs requirements-dev.txt on top (STAMP).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
# pytest workers for `make test` (pytest-xdist): two per CPU, at most 4. Most tests wait on
# subprocesses (gateways, containers, Chromium), so two workers per core overlap those waits
# (2 cores: 4 workers, about 2 min; 2 workers, about 3.5 min). A test file always runs whole on
# one worker (--dist loadfile), so module and session fixtures stay shared.
PYTEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, 2 * len(os.sched_getaffinity(0))))')
XDIST := -n $(PYTEST_WORKERS) --dist loadfile
# `make test-fast`: unit, protocol and store contract tests, and the docs check; no gateway, no
# browser, no lint (about 13 s on 2 shared cores).
FAST_TESTS := tests/test_protocol.py tests/test_capabilities.py tests/test_events.py \
	tests/test_delivery.py tests/test_retry.py tests/test_fanout.py tests/store tests/client \
	tests/test_docs.py

.PHONY: test test-fast lint typecheck unit run venv clean browser soak bench bench-quick capacity

$(RUN_STAMP): requirements.txt requirements-run.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-run.txt
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP) requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP) browser
	$(PY) -m pytest $(XDIST)

# The inner loop: no lint, no gateway subprocesses, no browser.
test-fast: $(STAMP)
	$(PY) -m pytest -q $(FAST_TESTS)

# Debian's Chromium for the Playwright browser tests (downloading a browser is not possible here).
browser:
	scripts/install-browser.sh

# The local gateway: REST on :8000, WebSocket on ws://127.0.0.1:8001/api (flags: ARGS="...").
run: $(RUN_STAMP)
	$(PY) -m localgateway --project-dir . --env-file local.env --static web $(ARGS)

test: lint typecheck unit

# Long reliability runs (docs/reliability.md): a few minutes, 127.0.0.1 only, bounded.
soak: $(STAMP)
	mkdir -p .local
	$(PY) -m tests.reliability.soak --json .local/soak.json
	RELIABILITY_EXAMPLES=2000 $(PY) -m pytest -q tests/reliability/test_hostile.py \
		tests/reliability/test_storage_faults.py tests/reliability/test_restart.py

# Benchmarks (docs/benchmarks.md, docs/fanout.png); PEER=1 adds serverless-offline side by side.
bench: $(STAMP)
	$(PY) -m bench $(if $(PEER),--peer) --out docs/benchmarks.md --plot docs/fanout.png

bench-quick: $(STAMP)
	$(PY) -m bench --quick $(if $(PEER),--peer) --out .local/bench-quick/benchmarks.md \
		--plot .local/bench-quick/fanout.png

# Capacity model (docs/capacity.md): DynamoDB units per action through the real handlers on moto,
# the app-wide ceiling and which limit sets it, dollars per million messages.  A few minutes.
capacity: $(STAMP)
	$(PY) -m bench.capacity --out docs/capacity.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .local
