"""The fuzz tests run without coverage's tracer: they judge the scheduler's answers to hostile input, not the
lines of the adapter and the port client that the coverage floor is about, and the tracer, called on every line
of hypothesis's engine, made them take 1.7 times as long (tests/fuzz: 31 s against 18.6 s, one after the other).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _unmeasured() -> Iterator[None]:
    try:
        from coverage import Coverage
        from coverage.exceptions import CoverageWarning
    except ImportError:  # coverage is a dev dependency: the tests run without it too
        yield
        return
    measuring = Coverage.current()
    if measuring is None:
        yield
        return
    measuring.stop()
    try:
        yield
    finally:
        with warnings.catch_warnings():  # started again, it finds hodei imported: as it was when it stopped
            warnings.filterwarnings(
                "ignore", "Already imported a file that will be measured", CoverageWarning
            )
            measuring.start()
