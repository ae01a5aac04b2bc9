# hodei — everything a newcomer runs. Each target bootstraps .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Python keeps what it compiles, whatever the shell says (this machine's sets PYTHONDONTWRITEBYTECODE): the suite
# starts hundreds of Python processes, and each pytest worker rewrites the assertions of every test module and of
# hodei's own (a pytest plugin's package); compiled once, a worker collects the suite in 1.9 s of CPU, not 5.8.
unexport PYTHONDONTWRITEBYTECODE
# The venv is rebuilt when pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# Files whose line and branch coverage must stay at 100%.
FULL_COVERAGE := src/hodei/registration/*,src/hodei/transport/_addresses.py,src/hodei/transport/_client.py,src/hodei/transport/_status.py

# The suite runs in pytest-xdist workers, each with its own PostgreSQL cluster and Podman service when its
# tests ask for them; a test module runs whole in one worker (its module fixtures start once), the longest handed
# out first (tests/conftest.py orders them). Four workers
# on this machine's two cores: the tests spend much of their time waiting (on leases, processes, containers),
# and the others fill that time (the suite without coverage, compiled modules kept: three workers 233 s, four
# 219 s, five 217 s, six 222 s).
WORKERS ?= 4
XDIST := -n $(WORKERS) --dist loadscope --no-loadscope-reorder
# `make check`'s fast tier: the unit and contract tests, and the integration tests of the registration flow (a
# worker registers, is refused with the right code, retries, and no provisioned worker stays unregistered).
CORE_TESTS := tests/unit tests/contract tests/integration/test_auto_registration.py \
	tests/integration/test_port_client.py tests/failure/test_error_codes_and_deadlines.py

.PHONY: demo check test test-fast test-flaky system-deps lint proto bench bench-fleet bench-containers clean mutation

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(STAMP)  ## provision workers against an embedded scheduler and show them registered; then a pool grows from 0 on a burst of jobs and shrinks back
	$(BIN)/hodei demo
	$(BIN)/hodei demo --pools

check: $(STAMP) system-deps lint  ## the fast tier (under 30 s): lint, then the unit, contract and core registration tests
	$(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) $(PYTEST_ARGS) $(CORE_TESTS)

# coverage runs pytest (rather than pytest-cov) so that it measures hodei from the first import, which
# happens when pytest loads hodei's own plugin; it follows the xdist workers (pyproject.toml's patch =
# subprocess) and combines their data files before the report. It measures only the packages of the floor's
# files: tracing the rest costs time and is not reported.
COVERED := src/hodei/registration,src/hodei/transport
# The tests marked `alone` (a latency bound) run afterwards, by themselves (pytest's 5: none selected).
test: $(STAMP) system-deps lint  ## lint, the whole suite, and the coverage floor of the adapter and the port client
	rm -f .coverage .coverage.*
	$(BIN)/coverage run --source=$(COVERED) -m pytest $(XDIST) -m 'not alone' $(PYTEST_ARGS)
	$(BIN)/coverage run --source=$(COVERED) -m pytest -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report --include='$(FULL_COVERAGE)' --fail-under=100

test-fast: $(STAMP) system-deps  ## the suite without coverage
	$(BIN)/python -m pytest -q $(XDIST) -m 'not alone' $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-flaky: $(STAMP)  ## the failure suite (tests/failure) 20 times in a row; every run must be green
	@started=$$(date +%s); \
	for run in $$(seq 20); do \
		echo "test-flaky: run $$run of 20"; \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/failure || exit 1; \
	done; \
	echo "test-flaky: 20 green runs in $$(( $$(date +%s) - started )) s"

system-deps:  ## PostgreSQL for the tests' throw-away cluster, Prometheus (promtool, server) for the alert tests, buf (npm, pinned, in tools/buf) for the contract checks, Podman (runc, mmdebstrap) for the Docker-API tests and their worker image (installed when missing)
	@sh tools/ensure-postgres.sh
	@sh tools/ensure-prometheus.sh
	@sh tools/ensure-buf.sh
	@sh tools/ensure-podman.sh

lint: $(STAMP)  ## ruff and strict mypy
	$(BIN)/ruff check src tests tools
	$(BIN)/ruff format --check src tests tools
	$(BIN)/mypy

bench: $(STAMP)  ## the registration benchmark: every scenario, a table, and benchmarks/last-run.json
	$(BIN)/hodei bench --json benchmarks/last-run.json

AGENTS ?= 10000
bench-fleet: $(STAMP)  ## the fleet benchmark: $(AGENTS) agents on one scheduler, steady heartbeats, SIGKILL and restart
	$(BIN)/hodei bench --scenario fleet --agents $(AGENTS) --json benchmarks/fleet-last-run.json

bench-containers: $(STAMP) system-deps  ## how long a container worker takes from provision_worker to AVAILABLE (root, Podman)
	$(BIN)/python -m hodei.bench.containers

proto: $(STAMP)  ## regenerate the Python code of the contract in proto/
	$(BIN)/python tools/genproto.py

# Mutation testing: the mutants of these functions only (mutmut globs; `?` stands for mutmut's `ǁ` in method
# names). See docs/mutation.md for the last run's score and its survivors.
MUTANTS := 'hodei.registration._adapter.*' 'hodei.registration._config.*' 'hodei.transport._status.*' \
	'hodei.errors.x_scheduler_error_for__mutmut_*' 'hodei.errors.x?SchedulerError?__init____mutmut_*' \
	'hodei.domain._validation.x_validate_*' 'hodei.domain._validation.x__range__mutmut_*' \
	'hodei.domain._validation.x__labels__mutmut_*' 'hodei.domain._workers.x_validate_*'
MUTATION_CHILDREN ?= 2
MUTATION_FLOOR ?= 90

# Prints every module's score and every surviving mutant; fails below $(MUTATION_FLOOR)% killed.
define MUTATION_SCORE
import collections, fnmatch, sys
floor, patterns = float(sys.argv[1]), sys.argv[2:]
by_module = collections.defaultdict(collections.Counter)
survivors = []
for line in sys.stdin:
    name, _, status = line.strip().rpartition(": ")
    if not any(fnmatch.fnmatch(name, p) for p in patterns):
        continue
    module = name.split(".x", 1)[0]
    by_module[module][status] += 1
    if status != "killed":
        survivors.append(f"{status}: {name}")
total = collections.Counter()
for module, counts in sorted(by_module.items()):
    total += counts
    n = sum(counts.values())
    print(f"{module:32} {counts['killed']:4} / {n:4} killed ({100 * counts['killed'] / n:5.1f}%)")
n = sum(total.values())
score = 100 * total["killed"] / n if n else 0.0
print(*sorted(survivors), sep="\n")
print(f"mutation score: {total['killed']} / {n} killed ({score:.1f}%), floor {floor:g}%")
sys.exit(0 if n and score >= floor else 1)
endef
export MUTATION_SCORE

mutation: $(STAMP)  ## mutation testing (mutmut) of the registration adapter, the error mapping and validation; >= 90% killed
	rm -rf mutants && mkdir mutants
	$(BIN)/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTANTS) > mutants/run.log 2>&1 \
		|| (tail -50 mutants/run.log; exit 1)
	$(BIN)/mutmut results --all true | $(BIN)/python -c "$$MUTATION_SCORE" $(MUTATION_FLOOR) $(MUTANTS)

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache
