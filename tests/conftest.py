"""Fixtures shared by the suites (hodei's own pytest plugin gives the public ones; the real services —
PostgreSQL, Podman, the agent image — come from :mod:`hodei._infra.fixtures`)."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hodei._infra.fixtures import agent_image, docker_url, podman_service, postgres_cluster, postgres_dsn
from hodei.observability import _tracing as tracing
from hodei.observability._logging import configure_logging
from hodei.testing import EmbeddedScheduler, FaultProxy

__all__ = [
    "agent_image",
    "docker_url",
    "podman_service",
    "postgres_cluster",
    "postgres_dsn",
]  # the suite's services


def pytest_configure(config: pytest.Config) -> None:
    # Under `make test`, coverage measures the pytest processes: the xdist workers from their start-up
    # (COVERAGE_PROCESS_CONFIG, set by pyproject.toml's patch = subprocess, read by coverage's .pth file). The
    # processes the tests start (schedulers, agents, fleets) are not measured, as they never were: slowed by
    # tracing, they would miss the tests' deadlines. Only a controller that hands the tests to workers keeps it.
    if not getattr(config.option, "numprocesses", None):
        os.environ.pop("COVERAGE_PROCESS_CONFIG", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The longest first, the shortest last (`make test` hands whole modules to xdist workers in this order:
    # --no-loadscope-reorder): the slow tests, then the other tests with processes, servers and containers, then
    # the unit tests, which fill the gaps at the end. A long module started last would keep its worker busy long
    # after the others are done. The sort is stable: a module's tests stay together and in order.
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, item.path.parent.name == "unit"))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """hodei traces into memory for the test; tracing is off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure_tracing("hodei-tests", provider=provider)
    try:
        yield exporter
    finally:
        tracing.configure_tracing("hodei-tests", environ={})
        provider.shutdown()


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """This process's logs, JSON at DEBUG, into a string; the root logger restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    try:
        yield stream
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)
        structlog.reset_defaults()


@pytest.fixture
def scheduler(hodei_embedded_scheduler: EmbeddedScheduler) -> EmbeddedScheduler:
    """The plugin's embedded scheduler (in memory, default leases); a module that needs another kind (other
    leases, security, a store) defines its own ``scheduler``."""
    return hodei_embedded_scheduler


@pytest.fixture
async def proxy(scheduler: EmbeddedScheduler) -> AsyncIterator[FaultProxy]:
    """A :class:`FaultProxy` in front of this test's ``scheduler``: dial ``proxy.target``."""
    async with FaultProxy(scheduler.target) as started:
        yield started
