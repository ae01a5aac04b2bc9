"""Fixtures shared by the suites (hodei's own pytest plugin gives the public ones)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hodei.observability import tracing


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
