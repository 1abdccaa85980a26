# EPM developer commands. Each target installs what it needs (uv, the locked dependencies).
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
PYTEST_ARGS ?=
QUICK ?=

.PHONY: setup chromium run test test-unit test-integration test-e2e lint format typecheck bench clean

setup:
	@command -v uv >/dev/null 2>&1 || [ -x "$(UV)" ] || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --quiet

## chromium: Debian's chromium for the console's browser tests (never a downloaded build)
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || { echo "install Debian's chromium (apt-get install chromium) for the browser tests" >&2; exit 1; }

## run: the whole stack on this machine (nats-server, streams, services, gateway)
run: setup
	$(UV) run epm dev

## test: lint, types and every test tier against a real nats-server
test: setup chromium lint typecheck
	$(UV) run pytest $(PYTEST_ARGS)

test-unit: setup
	$(UV) run pytest -m unit $(PYTEST_ARGS)

test-integration: setup
	$(UV) run pytest -m integration $(PYTEST_ARGS)

test-e2e: setup chromium
	$(UV) run pytest -m e2e $(PYTEST_ARGS)

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .

format: setup
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

typecheck: setup
	$(UV) run mypy

## bench: every benchmark, same-run raw-client ceilings; QUICK=1 for a smaller run
bench: setup
	$(UV) run python -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf .epm .pytest_cache .mypy_cache .ruff_cache
