"""The host usage an agent reports is read at most once per ``ttl`` for all the agents of a process."""

from __future__ import annotations

from hodei.agent._usage import HostUsage, host_usage
from hodei.domain import ResourceUsage
from hodei.testing import FakeClock


def test_a_sample_younger_than_the_ttl_is_reported_again_and_an_older_one_is_read_anew() -> None:
    clock = FakeClock()
    reads: list[ResourceUsage] = []

    def read() -> ResourceUsage:
        reads.append(ResourceUsage(cpu_percent=float(len(reads)), memory_used_mb=100 + len(reads)))
        return reads[-1]

    usage = HostUsage(read, ttl=1.0, clock=clock)
    first = usage.sample()
    clock.advance(0.5)
    again = usage.sample()
    clock.advance(0.5)
    later = usage.sample()

    assert (first, again) == (reads[0], reads[0])
    assert later == reads[1] == ResourceUsage(cpu_percent=1.0, memory_used_mb=101)
    assert len(reads) == 2


def test_the_process_sample_reads_the_host() -> None:
    sampled = host_usage.sample()

    assert 0.0 <= sampled.cpu_percent <= 100.0
    assert sampled.memory_used_mb > 0
