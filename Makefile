# hodei — everything a newcomer runs. Each target bootstraps .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The venv is rebuilt when pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# Files whose line and branch coverage must stay at 100%.
FULL_COVERAGE := src/hodei/registration/*,src/hodei/transport/client.py,src/hodei/transport/status.py

.PHONY: demo test test-fast system-deps lint proto bench clean

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(STAMP)  ## provision workers against an embedded scheduler and show them registered
	$(BIN)/hodei demo

# coverage runs pytest (rather than pytest-cov) so that it measures hodei from the first import, which
# happens when pytest loads hodei's own plugin.
test: $(STAMP) system-deps lint  ## lint, the whole suite, and the coverage floor of the adapter and the port client
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage report --include='$(FULL_COVERAGE)' --fail-under=100

test-fast: $(STAMP) system-deps  ## the suite without coverage
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

system-deps:  ## PostgreSQL for the tests' throw-away cluster, Prometheus (promtool, server) for the alert tests (installed when root and missing)
	@sh tools/ensure-postgres.sh
	@sh tools/ensure-prometheus.sh

lint: $(STAMP)  ## ruff and strict mypy
	$(BIN)/ruff check src tests tools
	$(BIN)/ruff format --check src tests tools
	$(BIN)/mypy

bench: $(STAMP)  ## the registration benchmark: every scenario, a table, and benchmarks/last-run.json
	$(BIN)/hodei bench --json benchmarks/last-run.json

proto: $(STAMP)  ## regenerate the Python code of the contract in proto/
	$(BIN)/python tools/genproto.py

clean:
	rm -rf $(VENV) .coverage .pytest_cache .mypy_cache .ruff_cache
