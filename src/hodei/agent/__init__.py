"""The worker agent: runs inside each worker and keeps the scheduler told.

One worker per process is a :class:`WorkerAgent`; several (``hodei agent --spawn N``) are the slots of
:func:`run_slots`, each named by :func:`slot_ids`, over the one connection of :class:`SharedChannels`.
"""

from hodei.agent._agent import AgentRefused, SharedChannelsLike, WorkerAgent
from hodei.agent._config import AgentConfig
from hodei.agent._slots import SharedChannels, run_slots, slot_ids

__all__ = [
    "AgentConfig",
    "AgentRefused",
    "SharedChannels",
    "SharedChannelsLike",
    "WorkerAgent",
    "run_slots",
    "slot_ids",
]
