"""The fleet benchmark: N real agents against one scheduler process, a steady window, then SIGKILL and restart.

``hodei bench --scenario fleet --agents N`` (``make bench-fleet``). The agents run in swarm processes
(:class:`hodei.bench.swarm.SwarmFleet`, at most ``per_swarm`` agents each, so that the load generator is never the
bottleneck), each agent with a connection of its own; the scheduler is ``hodei scheduler serve`` in a process
of its own, on the default store (SQLite) unless told otherwise, with its ``/metrics`` scraped. Measured:

1. the cold start: time until every agent's stream is up;
2. a steady window: heartbeats the scheduler received against those expected (agents * window / interval),
   the observed heartbeat interval's p50 and p99 (from ``hodei_heartbeat_lag_seconds``, whose buckets are
   0.1 s apart around the default interval), the scheduler's CPU share, RSS per agent and open files;
3. SIGKILL of the scheduler and a restart on the same port and store: time until every agent is connected
   again and every worker ``AVAILABLE``, the peak of the scheduler's connections and open files meanwhile,
   hellos refused and reconnections, workers seen ``LOST``, agents that exited.

With ``floor``, first the same swarms run against :mod:`hodei.bench.fleet_floor` (a server with the scheduler's
gRPC options and nothing of hodei's behind them) for a steady window and a SIGKILL and restart of their own: its
CPU share, RSS and way back are gRPC's own (and the swarms') cost of that fleet on this machine at that hour,
reported beside the scheduler's (:class:`FloorFigures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.table import Table

from hodei.bench.processes import (
    ProcessProbe,
    ServerProcess,
    Usage,
    free_port,
    heartbeat_buckets,
    histogram_quantile,
    open_files,
    scrape,
    tcp_connections,
    timed_scrape,
)
from hodei.bench.stores import registry_store
from hodei.bench.swarm import SwarmFleet

__all__ = ["FleetReport", "fleet_table", "run_fleet"]

Progress = Callable[[str, float, float], None]
"""``progress(phase, done, total)``."""


@dataclass
class RestartFigures:
    all_connected_s: float = math.nan
    all_available_s: float = math.nan
    peak_connections: int = 0
    peak_fds: int = 0
    hellos_refused: int = 0
    reconnects: int = 0
    workers_lost_max: int = 0


@dataclass
class FloorFigures:
    """The same fleet against the floor server: ``heartbeats_sent_share`` is what the swarms sent over the
    window against what the interval asks (the floor keeps no metrics)."""

    connect_s: float = math.nan
    heartbeats_sent_share: float = 0.0
    cpu_share: float = 0.0  # cores
    idle_rss_mb: float = 0.0  # before the first agent connected
    rss_mb: float = 0.0
    rss_kb_per_agent: float = 0.0
    all_back_s: float = math.nan  # from the SIGKILL until every agent was connected to the restarted floor


@dataclass
class FleetReport:
    agents: int
    swarms: int
    store: str
    heartbeat_interval: float
    slots: int = 1  # worker slots per host (agents sharing one connection)
    connect_s: float = math.nan
    steady_s: float = 0.0
    heartbeats_expected: float = 0.0
    heartbeats_delivered: float = 0.0
    interval_p50_s: float = math.nan
    interval_p99_s: float = math.nan
    scheduler_cpu_share: float = 0.0  # cores
    scheduler_idle_rss_mb: float = 0.0  # before the first agent connected
    scheduler_rss_mb: float = 0.0
    rss_kb_per_agent: float = 0.0
    scheduler_fds: int = 0
    scrape_s: list[float] = field(default_factory=lambda: [0.0, 0.0])  # /metrics at the steady window's ends
    hellos_refused_at_start: int = 0
    restart: RestartFigures | None = None
    floor: FloorFigures | None = None
    agent_exits: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def heartbeats_delivered_share(self) -> float:
        return self.heartbeats_delivered / self.heartbeats_expected if self.heartbeats_expected else 0.0

    def to_json(self) -> dict[str, object]:
        document = asdict(self)
        document["scenario"] = "fleet"
        document["heartbeats_delivered_share"] = self.heartbeats_delivered_share
        return document


async def _until(condition: Callable[[], bool], timeout: float, on_tick: Callable[[], None]) -> float:
    """Seconds until ``condition`` held (NaN if it did not within ``timeout``), calling ``on_tick`` as it waits."""
    started = time.perf_counter()
    while not condition():
        on_tick()
        if time.perf_counter() - started > timeout:
            return math.nan
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


async def _all_connected(
    swarms: SwarmFleet, agents: int, timeout: float, phase: str, tell: Progress
) -> float:
    """Seconds until all ``agents`` of ``swarms`` are connected (NaN if not within ``timeout``), told as ``phase``."""
    took = await _until(
        lambda: swarms.total("connected") == agents,
        timeout,
        lambda: tell(phase, swarms.total("connected"), agents),
    )
    tell(phase, swarms.total("connected"), agents)
    return took


async def _sigkill(server: ServerProcess, swarms: SwarmFleet, agents: int) -> float:
    """SIGKILL ``server``, then wait until the swarms' reports show the broken streams (so that "all connected"
    is not the old news); when it was killed."""
    server.kill()
    killed_at = time.perf_counter()
    await _until(lambda: swarms.total("connected") < agents, 30, lambda: None)
    return killed_at


def _held(before: Usage, after: Usage, agents: int) -> tuple[float, float, float]:
    """What a server held over a window: cores, RSS in MB at its end, and that RSS in KB per agent."""
    return ProcessProbe.cpu_percent(before, after) / 100, after.rss / 2**20, after.rss / 1024 / agents


async def _window(seconds: float, phase: str, tell: Progress) -> None:
    """Wait ``seconds``, telling the progress of ``phase`` twice a second."""
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        tell(phase, elapsed, seconds)
        await asyncio.sleep(min(0.5, seconds - elapsed))
    tell(phase, seconds, seconds)


async def _floor(
    agents: int,
    *,
    swarm_count: int,
    slots: int,
    steady: float,
    heartbeat: float,
    timeout: float,
    tell: Progress,
) -> FloorFigures:
    """The fleet against the floor server: connected, one interval to settle, ``steady`` s measured, then
    SIGKILL and a restart on the same port."""
    figures = FloorFigures()
    args = [
        "hodei.bench.fleet_floor",
        "--listen",
        "{address}",
        "--heartbeat-interval",
        str(heartbeat),
        "--max-streams",
        str(max(20_000, agents + 1000)),
    ]
    server = await ServerProcess(args).start(timeout=60)
    second: ServerProcess | None = None
    try:
        probe = ProcessProbe(server.pid, with_children=True)
        figures.idle_rss_mb = probe.sample().rss / 2**20
        swarms = SwarmFleet(server.address, agents, swarms=swarm_count, slots=slots, prefix="floor")
        try:
            figures.connect_s = await _all_connected(swarms, agents, timeout, "floor", tell)
            await asyncio.sleep(heartbeat)
            sent, before = swarms.total("heartbeats"), probe.sample()
            await _window(steady, "floor steady", tell)
            after = probe.sample()
            expected = agents * (after.at - before.at) / heartbeat
            figures.heartbeats_sent_share = (swarms.total("heartbeats") - sent) / expected
            figures.cpu_share, figures.rss_mb, figures.rss_kb_per_agent = _held(before, after, agents)
            # SIGKILL and a restart on the same port: how long gRPC and the agents take to be back, with no
            # store, no admission and no registry behind the hellos.
            killed_at = await _sigkill(server, swarms, agents)
            second = await ServerProcess(args, port=server.port).start(timeout=60)
            back = await _all_connected(swarms, agents, timeout, "floor restart", tell)
            figures.all_back_s = math.nan if math.isnan(back) else time.perf_counter() - killed_at
        finally:
            await swarms.stop()
    finally:
        server.kill()
        if second is not None:
            second.kill()
    return figures


def _scheduler(
    port: int, store: str, metrics_port: int, agents: int, heartbeat: float, log: Path
) -> ServerProcess:
    """``hodei scheduler serve`` for ``agents`` agents from one address, its ``/metrics`` on ``metrics_port``."""
    return ServerProcess.scheduler(
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--max-streams",
        str(max(20_000, agents + 1000)),
        "--max-streams-per-peer",
        str(agents + 1000),
        "--heartbeat-interval",
        str(heartbeat),
        "--lease-ttl",
        str(3 * heartbeat),
        "--log-level",
        "warning",
        store=store,
        port=port,
        log=log,
    )


async def run_fleet(
    agents: int,
    *,
    store: str = "sqlite",
    steady: float = 30.0,
    heartbeat: float = 5.0,
    per_swarm: int = 2500,
    slots: int = 1,
    restart: bool = True,
    floor: bool = False,
    timeout: float = 300.0,
    progress: Progress | None = None,
    log_directory: Path | None = None,
) -> FleetReport:
    """Run the fleet benchmark with ``agents`` agents; ``steady`` seconds of heartbeats are measured (with
    ``floor``, against the floor server first)."""
    if agents < 1:
        raise ValueError(f"--agents must be at least 1, got {agents}")
    tell = progress or (lambda phase, done, total: None)
    swarm_count = math.ceil(agents / per_swarm)
    if slots < 1:
        raise ValueError(f"--slots must be at least 1, got {slots}")
    report = FleetReport(
        agents=agents, swarms=swarm_count, store=store, heartbeat_interval=heartbeat, slots=slots
    )
    if floor:
        report.floor = await _floor(
            agents,
            swarm_count=swarm_count,
            slots=slots,
            steady=steady,
            heartbeat=heartbeat,
            timeout=timeout,
            tell=tell,
        )
    port, metrics_port = free_port(), free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with contextlib.ExitStack() as stack:
        directory = log_directory or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="hodei-fleet-"))
        )
        log = directory / "scheduler.log"
        async with registry_store(store) as url:
            first = await _scheduler(port, url, metrics_port, agents, heartbeat, log).start(timeout=60)
            second: ServerProcess | None = None
            probe = ProcessProbe(first.pid, with_children=True)
            report.scheduler_idle_rss_mb = probe.sample().rss / 2**20
            try:
                swarms = SwarmFleet(first.address, agents, swarms=swarm_count, slots=slots)
            except BaseException:
                first.kill()
                raise
            try:
                # 1. cold start
                report.connect_s = await _all_connected(swarms, agents, timeout, "connect", tell)
                report.hellos_refused_at_start = swarms.total("hellos_refused")
                if math.isnan(report.connect_s):
                    report.notes.append(
                        f"only {swarms.total('connected')} of {agents} connected in {timeout:g} s"
                    )
                # 2. steady window (after one interval, so every agent is in its heartbeat rhythm)
                await asyncio.sleep(heartbeat)
                before, read_before, report.scrape_s[0] = await timed_scrape(metrics_url)
                usage_before = probe.sample()
                await _window(steady, "steady", tell)
                after, read_after, report.scrape_s[1] = await timed_scrape(metrics_url)
                usage_after = probe.sample()
                # The heartbeats counted between the two reads of the counter, over the time between them.
                report.steady_s = read_after - read_before
                count_key: tuple[tuple[str, str], ...] = ()
                delivered = after.get("hodei_heartbeat_lag_seconds_count", {}).get(
                    count_key, 0.0
                ) - before.get("hodei_heartbeat_lag_seconds_count", {}).get(count_key, 0.0)
                report.heartbeats_expected = agents * report.steady_s / heartbeat
                report.heartbeats_delivered = delivered
                earlier = dict(heartbeat_buckets(before))
                window = [
                    (bound, count - earlier.get(bound, 0.0)) for bound, count in heartbeat_buckets(after)
                ]
                report.interval_p50_s = histogram_quantile(0.5, window)
                report.interval_p99_s = histogram_quantile(0.99, window)
                report.scheduler_cpu_share, report.scheduler_rss_mb, report.rss_kb_per_agent = _held(
                    usage_before, usage_after, agents
                )
                report.scheduler_fds = open_files(first.pid)
                # 3. SIGKILL and restart on the same port and store
                if restart:
                    killed_at = await _sigkill(first, swarms, agents)
                    second = _scheduler(port, url, metrics_port, agents, heartbeat, log)
                    report.restart = await _restart(
                        second, swarms, metrics_url, agents, heartbeat, timeout, tell, killed_at
                    )
                report.agent_exits = swarms.total("exits")
            finally:
                await swarms.stop()
                first.kill()
                if second is not None:
                    second.kill()
    return report


async def _restart(
    second: ServerProcess,
    swarms: SwarmFleet,
    metrics_url: str,
    agents: int,
    heartbeat: float,
    timeout: float,
    tell: Progress,
    started: float,
) -> RestartFigures:
    """The first scheduler was killed at ``started``: start ``second`` on its port and store, and watch the
    fleet come back (times count from the kill)."""
    figures = RestartFigures()
    refused, reconnects = swarms.total("hellos_refused"), swarms.total("reconnects")
    await second.start(timeout=60)
    available = 0
    lost = 0

    async def sample() -> None:
        nonlocal available, lost
        figures.peak_connections = max(figures.peak_connections, tcp_connections(second.pid))
        figures.peak_fds = max(figures.peak_fds, open_files(second.pid))
        with contextlib.suppress(OSError, ValueError):
            workers = (await scrape(metrics_url)).get("hodei_workers", {})
            available = int(workers.get((("status", "available"),), 0))
            lost = int(workers.get((("status", "lost"),), 0))
            figures.workers_lost_max = max(figures.workers_lost_max, lost)

    deadline = started + timeout
    while time.perf_counter() < deadline:
        await sample()
        connected = swarms.total("connected")
        tell("restart", connected, agents)
        if connected == agents and math.isnan(figures.all_connected_s):
            figures.all_connected_s = time.perf_counter() - started
        if connected == agents and available == agents:
            figures.all_available_s = time.perf_counter() - started
            break
        await asyncio.sleep(0.5)
    # Keep the restarted scheduler for one lease more: a worker that goes LOST after all came back counts.
    settle = time.perf_counter() + 3 * heartbeat
    while time.perf_counter() < settle:
        await sample()
        await asyncio.sleep(0.5)
    figures.hellos_refused = swarms.total("hellos_refused") - refused
    figures.reconnects = swarms.total("reconnects") - reconnects
    return figures


def _seconds(value: float) -> str:
    return "not reached" if math.isnan(value) else f"{value:.1f} s"


def fleet_table(reports: list[FleetReport]) -> Table:
    """One row per report, and under it the row of its floor (if it was measured)."""
    table = Table(title="hodei fleet benchmark")
    if any(r.floor for r in reports):
        table.caption = (
            "gRPC floor: the same agents against a server with the scheduler's gRPC options and nothing of "
            "hodei's behind them (python -m hodei.bench.fleet_floor); its heartbeats are those the agents sent"
        )
    for column in (
        "agents",
        "slots/host",
        "swarms",
        "store",
        "all connected",
        "heartbeats delivered",
        "interval p50 / p99",
        "sched CPU",
        "sched RSS",
        "KB/agent",
        "fds",
        "restart: all connected",
        "all AVAILABLE",
        "peak conns / fds",
        "refused / reconnects",
        "LOST",
        "agent exits",
    ):
        table.add_column(column, justify="right", overflow="fold")
    for r in reports:
        again = r.restart
        table.add_row(
            f"{r.agents:,}",
            str(r.slots),
            str(r.swarms),
            r.store,
            _seconds(r.connect_s),
            f"{r.heartbeats_delivered_share:.1%}",
            f"{r.interval_p50_s:.2f} / {r.interval_p99_s:.2f} s",
            f"{r.scheduler_cpu_share:.2f} core",
            f"{r.scheduler_rss_mb:.0f} MB",
            f"{r.rss_kb_per_agent:.1f}",
            str(r.scheduler_fds),
            _seconds(again.all_connected_s) if again else "-",
            _seconds(again.all_available_s) if again else "-",
            f"{again.peak_connections:,} / {again.peak_fds:,}" if again else "-",
            f"{again.hellos_refused:,} / {again.reconnects:,}" if again else "-",
            str(again.workers_lost_max) if again else "-",
            str(r.agent_exits),
        )
        if (floor := r.floor) is not None:
            table.add_row(
                f"{r.agents:,}",
                str(r.slots),
                str(r.swarms),
                "gRPC floor",
                _seconds(floor.connect_s),
                f"{floor.heartbeats_sent_share:.1%}",
                "-",
                f"{floor.cpu_share:.2f} core",
                f"{floor.rss_mb:.0f} MB",
                f"{floor.rss_kb_per_agent:.1f}",
                "-",
                _seconds(floor.all_back_s),
                *("-",) * 5,
            )
    return table
