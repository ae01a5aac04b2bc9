"""Test doubles that are real: a scheduler on loopback, one that fails on purpose, a store whose writes fail or
stall on purpose, an in-memory provider, and a clock the test moves.

Shipped for people who test their own integrations with hodei; hodei's own suite uses the same.
"""

from hodei.testing._clock import FakeClock
from hodei.testing._embedded import EmbeddedScheduler
from hodei.testing._failing import REGISTRATION_METHODS, FailingScheduler
from hodei.testing._faulty_store import FaultyStore
from hodei.testing._provider import MockWorkerProvider
from hodei.testing._proxy import FaultProxy

__all__ = [
    "REGISTRATION_METHODS",
    "EmbeddedScheduler",
    "FailingScheduler",
    "FakeClock",
    "FaultProxy",
    "FaultyStore",
    "MockWorkerProvider",
]
