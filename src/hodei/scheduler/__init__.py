"""The scheduler's core: the worker registry, the agents' sessions, liveness and events — no gRPC below here.

The gRPC face that serves it is :mod:`hodei.server`. Exported with it: what its methods take and return — the
agents' sessions and commands, the event hub and its events, liveness settings, and the ports a replicated
scheduler stands on (:class:`Leadership`, :class:`EventRelay`).
"""

from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.ports import (
    DrainOutcome,
    EventRelay,
    Leadership,
    Relayed,
    RelayedAck,
    RelayedCommand,
    RelayedEvent,
)
from hodei.scheduler._core import Scheduler
from hodei.scheduler._events import EventHub, Watcher, WatcherFellBehind
from hodei.scheduler._leadership import SoleLeader
from hodei.scheduler._registry import WorkerRegistry
from hodei.scheduler._sessions import AgentSession, CommandQueue

__all__ = [
    "AgentSession",
    "CommandKind",
    "CommandQueue",
    "DrainOutcome",
    "EventHub",
    "EventRelay",
    "Leadership",
    "LivenessConfig",
    "Relayed",
    "RelayedAck",
    "RelayedCommand",
    "RelayedEvent",
    "Scheduler",
    "SoleLeader",
    "Watcher",
    "WatcherFellBehind",
    "WorkerCommand",
    "WorkerEvent",
    "WorkerEventKind",
    "WorkerRegistry",
]
