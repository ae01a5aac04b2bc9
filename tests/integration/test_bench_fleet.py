"""The fleet benchmark at a small size: its figures are complete and what it counts is true (not its speed)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hodei.bench.fleet import fleet_table, run_fleet
from hodei.bench.processes import histogram_quantile, tcp_connections

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_a_small_fleet_connects_heartbeats_and_all_come_back_after_a_sigkill_and_restart(
    tmp_path: Path,
) -> None:
    phases: set[str] = set()
    report = await run_fleet(
        60,
        steady=3.0,
        heartbeat=1.5,  # in the middle of a histogram bucket, (1, 2] s
        per_swarm=25,
        floor=True,
        progress=lambda phase, done, total: phases.add(phase),
        log_directory=tmp_path,
    )

    assert (report.agents, report.swarms, report.store) == (60, 3, "sqlite")
    assert phases == {"floor", "floor steady", "floor restart", "connect", "steady", "restart"}
    assert report.connect_s > 0 and report.notes == []
    assert report.heartbeats_expected == pytest.approx(60 * report.steady_s / 1.5)
    # The window runs from one read of the counters to the other: at least the 3 s asked for.
    assert report.steady_s >= 3.0 and all(0 < took < 10 for took in report.scrape_s)
    assert report.heartbeats_delivered > 0
    # The agents beat at the interval the scheduler asked for: p50 falls in the bucket that holds 1.5 s (the
    # buckets are 0.1 s apart only around the default 5 s interval).
    assert 1.0 < report.interval_p50_s <= 2.0
    assert 0 < report.scheduler_idle_rss_mb < report.scheduler_rss_mb and report.scheduler_fds > 60
    # The same agents against the floor first: all connected, beating, and its process measured.
    floor = report.floor
    assert floor is not None and floor.connect_s > 0
    # The swarms report their counts every 0.5 s, so each end of the 3 s window may be up to 0.5 s old: 20 of
    # the 120 heartbeats expected, at either end.
    assert 0.6 < floor.heartbeats_sent_share < 1.4
    assert floor.cpu_share > 0 and 0 < floor.idle_rss_mb < floor.rss_mb
    assert floor.rss_kb_per_agent == pytest.approx(floor.rss_mb * 1024 / 60)
    assert floor.all_back_s > 0  # every agent back on the restarted floor
    assert report.restart is not None
    assert (
        report.restart.all_connected_s > 0
        and report.restart.all_available_s >= report.restart.all_connected_s
    )
    assert report.restart.reconnects >= 60  # every agent's stream broke and was opened again
    assert report.restart.peak_connections >= 60
    assert report.restart.workers_lost_max == 0
    assert report.agent_exits == 0
    document = report.to_json()
    assert document["scenario"] == "fleet" and document["restart"]["workers_lost_max"] == 0  # type: ignore[index]
    assert document["floor"]["cpu_share"] == floor.cpu_share  # type: ignore[index]
    assert "gRPC floor" in (fleet_table([report]).caption or "")


async def test_a_fleet_of_hosts_with_several_slots_holds_one_connection_per_host(tmp_path: Path) -> None:
    report = await run_fleet(40, steady=1.0, heartbeat=1.0, slots=10, restart=True, log_directory=tmp_path)

    assert (report.agents, report.slots, report.agent_exits, report.notes) == (40, 10, 0, [])
    assert report.floor is None  # not asked for
    assert fleet_table([report]).caption is None
    assert report.restart is not None and report.restart.workers_lost_max == 0
    # Four hosts of ten slots: four connections (the scheduler's own sockets aside), not forty.
    assert 4 <= report.restart.peak_connections < 10


def test_quantiles_are_read_from_cumulative_buckets_as_prometheus_does() -> None:
    buckets = [(4.9, 0.0), (5.0, 50.0), (5.1, 99.0), (5.2, 100.0), (math.inf, 100.0)]

    assert histogram_quantile(0.5, buckets) == pytest.approx(5.0)
    assert histogram_quantile(0.99, buckets) == pytest.approx(5.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(4.95)
    assert math.isnan(histogram_quantile(0.5, [(5.0, 0.0), (math.inf, 0.0)]))
    assert histogram_quantile(0.99, [(5.0, 10.0), (math.inf, 20.0)]) == 5.0  # beyond the last bound


def test_the_bench_command_runs_the_fleet_scenario_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    command = [
        "bench",
        "--scenario",
        "fleet",
        "--agents",
        "5",
        "--steady",
        "2",
        "--heartbeat",
        "1",
        "--json",
        str(out),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "hodei", *command],
        capture_output=True,
        text=True,
        timeout=150,
    )

    assert result.returncode == 0, result.stderr
    assert "hodei fleet benchmark" in result.stdout
    document = json.loads(out.read_text())
    assert (document["scenario"], document["agents"], document["agent_exits"]) == ("fleet", 5, 0)
    assert document["heartbeat_interval"] == 1.0  # as asked: the agents beat every second
    assert document["floor"]["connect_s"] > 0  # measured by default  # type: ignore[index]


# A process of its own that holds three connections to its own listener (both ends each), then closes one.
_HOLDER = """
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
accepted = [listener.accept()[0] for _ in clients]
print("open", flush=True)
sys.stdin.readline()
accepted[0].close()
clients[0].close()
print("closed one", flush=True)
sys.stdin.readline()
"""


def test_the_connections_counted_are_those_a_process_holds_open() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "open\n"
        # The listener is not a connection; both ends of each connection are the holder's.
        held = tcp_connections(holder.pid)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "closed one\n"
        after_closing = tcp_connections(holder.pid)
    finally:
        holder.kill()
        holder.wait(timeout=10)

    assert (held, after_closing) == (6, 4)
    assert tcp_connections(holder.pid) == 0  # gone
