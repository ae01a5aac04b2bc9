"""Smoke runs of every benchmark scenario at small counts: correctness and a complete report, not speed."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from hodei._infra.fixtures import skip_or_fail_for_missing
from hodei._infra.postgres import missing_postgres
from hodei.bench.disk import fsync_rate
from hodei.bench.report import ScenarioResult, Target, percentile
from hodei.bench.runner import SCENARIOS, Scale, run_benchmark

REPORT_FIELDS = {
    "scenario",
    "store",
    "workers",
    "elapsed_s",
    "errors_by_kind",
    "workers_per_second",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "scheduler_cpu_percent",
    "scheduler_rss_before_mb",
    "scheduler_rss_after_mb",
    "targets",
}

# CPU time is counted in 10 ms ticks: the quick scale's 50 sequential calls may cost the serving process less
# than one, so the smoke run makes 300, enough to be seen however busy the machine is.
SCALE = dataclasses.replace(Scale.quick(), sequential=300)

# The module's first test runs every scenario (its fixture): 15 s on a quiet machine, over the default minute on a
# machine busy with other work.
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def quick_results() -> list[ScenarioResult]:
    import asyncio

    return asyncio.run(run_benchmark(list(SCENARIOS), SCALE, target=None, console=Console(quiet=True)))


def test_every_scenario_runs_without_errors_and_reports_every_field(
    quick_results: list[ScenarioResult],
) -> None:
    assert [r.name for r in quick_results] == list(SCENARIOS)
    for result in quick_results:
        report = result.to_json()
        assert set(report) >= REPORT_FIELDS, result.name
        assert report["errors"] == 0 and report["errors_by_kind"] == {}, result.name
        assert report["workers_per_second"] > 0, result.name
        assert report["scheduler_rss_after_mb"] > 0, result.name
        # CPU time is counted in 10 ms ticks: a handful of idle agents may not cost the scheduler one, so only
        # the registration scenarios must show some.
        if result.name != "agents":
            assert report["scheduler_cpu_percent"] > 0, result.name


def test_every_scenario_runs_on_the_store_serve_defaults_to_and_says_so(
    quick_results: list[ScenarioResult],
) -> None:
    assert {r.store for r in quick_results if not r.name.startswith("baseline")} == {"sqlite"}
    assert {r.store for r in quick_results if r.name.startswith("baseline")} == {""}


@pytest.mark.parametrize("store", ["memory", "postgres"])
def test_the_scenarios_run_on_each_store_with_that_store_s_targets(store: str) -> None:
    import asyncio

    if store == "postgres" and (missing := missing_postgres()) is not None:
        skip_or_fail_for_missing(missing)
    names = ["baseline-concurrent", "concurrent-500", "batch-10000"]
    results = asyncio.run(
        run_benchmark(names, Scale.quick(), target=None, console=Console(quiet=True), store=store)
    )

    assert [(r.name, r.store) for r in results] == [(names[0], ""), (names[1], store), (names[2], store)]
    assert [r.errors for r in results] == [{}] * 3
    assert [r.registered_after - r.registered_before for r in results[1:]] == [
        Scale.quick().concurrent,
        Scale.quick().batch * Scale.quick().batch_rounds + min(Scale.quick().batch, 1000),
    ]
    ratio = next(t for t in results[1].targets if t.metric == "ratio_to_baseline")
    batch = next(t for t in results[2].targets if t.metric == "workers_per_second")
    assert (ratio.value, batch.value) == {"memory": (0.65, 50_000), "postgres": (0.5, 23_000)}[store]


def test_an_unknown_store_is_refused_with_the_known_ones() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hodei", "bench", "--store", "mongo"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "unknown store 'mongo'; known: sqlite, memory, postgres" in result.stderr


def test_the_sequential_scenario_on_sqlite_reports_the_disk_s_fsync_rate_beside_it(
    quick_results: list[ScenarioResult], tmp_path: Path
) -> None:
    sequential = next(r for r in quick_results if r.name == "sequential")
    assert sequential.metrics()["disk_fsyncs_per_second"] > 0
    assert fsync_rate(tmp_path, seconds=0.05) > 0
    assert list(tmp_path.iterdir()) == []  # the probe's file is gone


def test_each_registration_scenario_registered_exactly_its_workers(
    quick_results: list[ScenarioResult],
) -> None:
    scale = SCALE
    registered = {r.name: r.registered_after - r.registered_before for r in quick_results}

    assert registered["sequential"] == scale.sequential
    assert registered["concurrent-500"] == scale.concurrent
    assert registered["concurrent-10000"] == scale.storm
    # the batches and their warm-up
    assert registered["batch-10000"] == scale.batch * scale.batch_rounds + min(scale.batch, 1000)
    assert registered["open-loop-1000"] == int(1000 * scale.open_loop_seconds)
    assert registered["churn"] == 0  # every cycle unregistered what it registered
    assert registered["agents"] == 0  # the agents unregistered on the way out
    assert registered["pool-acquire"] == scale.pool_workers  # the warm pool, every worker released again
    assert registered["pool-burst-500"] == scale.pool_burst
    assert registered["pool-from-zero-50"] == 0  # the pool's agents decommissioned at the end


def test_the_pool_scenarios_bind_every_acquire_and_time_the_pool_growing_from_zero(
    quick_results: list[ScenarioResult],
) -> None:
    by_name = {r.name: r.metrics() for r in quick_results}
    scale = SCALE

    assert by_name["pool-burst-500"]["distinct_workers_bound"] == scale.pool_burst
    grown = by_name["pool-from-zero-50"]
    assert grown["provisioned"] == scale.pool_from_zero  # one worker per job, never more
    assert 0 < grown["first_provision_s"] <= grown["all_running_s"]
    assert 0 < grown["slowest_provision_s"] <= grown["all_running_s"]


def test_latencies_are_measured_per_call(quick_results: list[ScenarioResult]) -> None:
    by_name = {r.name: r for r in quick_results}
    scale = SCALE

    assert len(by_name["sequential"].latencies) == scale.sequential
    assert len(by_name["concurrent-500"].latencies) == scale.concurrent
    assert len(by_name["baseline-concurrent"].latencies) == scale.baseline
    assert len(by_name["agents"].latencies) == scale.agents
    assert by_name["batch-10000"].extra["client_tasks_peak"] <= 64


def test_the_concurrent_scenario_is_related_to_the_same_run_baseline(
    quick_results: list[ScenarioResult],
) -> None:
    by_name = {r.name: r for r in quick_results}
    concurrent, base = by_name["concurrent-500"], by_name["baseline-concurrent"]

    assert concurrent.extra["ratio_to_baseline"] == pytest.approx(
        concurrent.workers_per_second / base.workers_per_second
    )
    assert {t.metric for t, _, _ in concurrent.verdicts()} == {
        "workers_per_second",
        "ratio_to_baseline",
        "p95_ms",
        "p95_ratio_to_baseline",
    }


def test_each_scenario_on_the_scheduler_reports_how_many_registrations_shared_a_transaction(
    quick_results: list[ScenarioResult],
) -> None:
    shared = {r.name: r.metrics().get("registrations_per_transaction") for r in quick_results}

    assert shared["baseline-concurrent"] is None  # not a scheduler
    assert shared["sequential"] == 1.0  # one at a time: each commits alone
    assert shared["concurrent-500"] is not None and shared["concurrent-500"] > 1  # they share commits
    # Every call of the batches holds 250 workers, written whole in one transaction (with others, or alone).
    assert shared["batch-10000"] is not None and shared["batch-10000"] >= 250


def test_the_churn_scenario_reports_memory_growth_after_warm_up(quick_results: list[ScenarioResult]) -> None:
    churn = next(r for r in quick_results if r.name == "churn")

    assert "rss_growth_after_warmup_mb" in churn.metrics()
    assert churn.workers == Scale.quick().churn


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]

    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 1.0)) == (50.0, 95.0, 100.0)
    assert percentile([], 0.5) == 0.0


def test_a_target_is_met_or_missed_in_its_direction() -> None:
    at_least, at_most = Target("workers_per_second", 100), Target("p95_ms", 10, at_most=True)

    assert (at_least.met(100), at_least.met(99.9)) == (True, False)
    assert (at_most.met(10), at_most.met(10.1)) == (True, False)


def test_the_bench_command_writes_json_with_every_field(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "hodei", "bench", "--quick", "--scenario", "sequential", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "hodei registration benchmark" in result.stdout
    [report] = json.loads(out.read_text())
    assert set(report) >= REPORT_FIELDS and report["scenario"] == "sequential"


def test_an_unknown_scenario_is_refused_with_the_known_ones() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hodei", "bench", "--scenario", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "unknown scenario(s) nope" in result.stderr and "sequential" in result.stderr


def test_the_scenarios_run_against_a_scheduler_with_tls_and_tokens_without_errors() -> None:
    import asyncio

    from hodei.bench.security import BenchSecurity

    names = ["baseline-sequential", "sequential", "batch-10000", "concurrent-10000", "churn", "agents"]
    results = asyncio.run(
        run_benchmark(
            names,
            Scale.quick(),
            target=None,
            console=Console(quiet=True),
            security=BenchSecurity(tls=True, auth=True),
        )
    )

    assert [r.name for r in results] == names
    assert [r.errors for r in results] == [{}] * len(names)
    assert all(r.workers_per_second > 0 for r in results)
    assert [(r.extra.get("tls"), r.extra.get("auth")) for r in results] == [(None, None)] + [(1.0, 1.0)] * 5
    assert results[3].extra["health_checks"] > 0  # the health probe spoke TLS too


def test_tls_and_tokens_are_for_the_bench_s_own_schedulers_not_a_target() -> None:
    import asyncio

    from hodei.bench.security import BenchSecurity

    with pytest.raises(ValueError, match="not to --target"):
        asyncio.run(
            run_benchmark(
                ["sequential"],
                Scale.quick(),
                target="127.0.0.1:1",
                console=Console(quiet=True),
                security=BenchSecurity(tls=True),
            )
        )
