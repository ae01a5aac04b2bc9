"""A swarm of real agents in one process, for the fleet benchmark.

``python -m hodei.bench.swarm TARGET PREFIX FIRST COUNT [--report-every S]`` runs ``COUNT`` in-process
:class:`~hodei.agent.WorkerAgent`\\ s (``PREFIX-FIRST`` …), each with a connection of its own as real agents
have, and prints one JSON line of counts every ``--report-every`` seconds on standard output (see
:func:`counts`). SIGTERM shuts every agent down (drain, unregister) and prints a last line.
:class:`SwarmFleet` is the other end: it starts swarm processes and reads their counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import subprocess
import sys
from collections.abc import Sequence

from hodei._collector import tune_for_long_lived_objects
from hodei._waiting import wait_until_set
from hodei.agent._agent import WorkerAgent
from hodei.agent._config import AgentConfig
from hodei.agent._slots import SharedChannels
from hodei.observability._metrics import AgentMetrics

__all__ = ["SwarmFleet", "counts", "swarm"]


def counts(
    agents: Sequence[WorkerAgent], tasks: Sequence[asyncio.Task[None]], metrics: AgentMetrics
) -> dict[str, int]:
    """``connected``: agents whose stream is up now; ``heartbeats``: sent so far; ``hellos_ok`` and
    ``hellos_refused``: Connect streams opened or refused (any status code) so far; ``reconnects``; ``exits``:
    agents whose run ended (before they were told to stop, none should)."""
    registry = metrics.registry
    refused = 0
    for family in registry.collect():
        if family.name == "hodei_agent_stream_connects":
            refused += int(
                sum(
                    s.value
                    for s in family.samples
                    if s.name.endswith("_total") and s.labels["result"] != "ok"
                )
            )
    return {
        "agents": len(agents),
        "connected": sum(1 for agent in agents if agent.connected.is_set()),
        "heartbeats": int(registry.get_sample_value("hodei_agent_heartbeats_total") or 0),
        "hellos_ok": int(
            registry.get_sample_value("hodei_agent_stream_connects_total", {"result": "ok"}) or 0
        ),
        "hellos_refused": refused,
        "reconnects": int(registry.get_sample_value("hodei_agent_reconnects_total") or 0),
        "exits": sum(1 for task in tasks if task.done()),
    }


async def swarm(
    target: str, prefix: str, first: int, count: int, *, report_every: float = 0.5, slots: int = 1
) -> None:
    """``slots`` > 1: the agents are hosts of that many worker slots, each host's slots over one connection (as
    ``hodei agent --spawn``); 1: every agent has a connection of its own."""
    metrics = AgentMetrics()  # one registry for the swarm: its counts are the sums over its agents
    hosts: list[SharedChannels] = []
    agents: list[WorkerAgent] = []
    for index in range(first, first + count):
        channels = None
        if slots > 1:
            if (index - first) % slots == 0:
                hosts.append(SharedChannels())
            channels = hosts[-1]
        agents.append(
            WorkerAgent(
                AgentConfig(
                    schedulers=(target,),
                    worker_id=f"{prefix}-{index:05d}",
                    cpu_cores=1,
                    memory_mb=512,
                    hostname=f"{prefix}-host-{(index - first) // slots}",
                ),
                metrics=metrics,
                channels=channels,
            )
        )
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def report() -> None:
        sys.stdout.write(json.dumps(counts(agents, tasks, metrics)) + "\n")
        sys.stdout.flush()

    while not stop.is_set():
        report()
        await wait_until_set(stop, report_every)
    for agent in agents:
        agent.request_shutdown("fleet benchmark over")
    await asyncio.wait(tasks, timeout=60)
    for host in hosts:
        await host.aclose()
    report()


class _Swarm:
    """One swarm process and the last counts it reported."""

    def __init__(self, target: str, prefix: str, first: int, count: int, slots: int = 1) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hodei.bench.swarm",
                target,
                prefix,
                str(first),
                str(count),
                "--slots",
                str(slots),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.counts: dict[str, int] = {"agents": count}
        self._reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        stream = self.process.stdout
        while line := await asyncio.to_thread(stream.readline):
            with contextlib.suppress(ValueError):
                self.counts = json.loads(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
        if self._reader is not None:
            await self._reader


class SwarmFleet:
    """The swarm processes of a fleet of ``agents`` agents, ``swarms`` of them in whole hosts of ``slots``:
    started at once, their last reported counts summed by :meth:`total`, stopped by :meth:`stop` (SIGTERM: every
    agent drains and unregisters; a swarm still there after ``grace`` is killed)."""

    def __init__(
        self, target: str, agents: int, *, swarms: int, slots: int = 1, prefix: str = "fleet"
    ) -> None:
        size = math.ceil(agents / swarms / slots) * slots  # whole hosts in each swarm
        self._swarms = [
            _Swarm(target, f"{prefix}-{index:02d}", index * size, min(size, agents - index * size), slots)
            for index in range(swarms)
        ]
        for swarm in self._swarms:
            swarm.start_reading()

    def total(self, key: str) -> int:
        """The sum of one count (``connected``, ``reconnects``, ``exits`` …) over the swarms' last reports."""
        return sum(s.counts.get(key, 0) for s in self._swarms)

    async def stop(self, grace: float = 90.0) -> None:
        for swarm in self._swarms:
            swarm.stop()
        for swarm in self._swarms:
            await swarm.wait(grace)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hodei.bench.swarm")
    parser.add_argument("target")
    parser.add_argument("prefix")
    parser.add_argument("first", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--report-every", type=float, default=0.5)
    parser.add_argument(
        "--slots", type=int, default=1, help="worker slots per host (one connection each host)"
    )
    args = parser.parse_args(argv)
    # The load generator, not the thing measured: thousands of agents' long-lived objects, as in the scheduler.
    tune_for_long_lived_objects()
    asyncio.run(
        swarm(
            args.target, args.prefix, args.first, args.count, report_every=args.report_every, slots=args.slots
        )
    )


if __name__ == "__main__":
    main()
