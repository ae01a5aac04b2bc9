"""The worker agent: runs inside each worker and keeps the scheduler told."""

from hodei.agent._agent import AgentRefused, WorkerAgent
from hodei.agent._config import AgentConfig

__all__ = ["AgentConfig", "AgentRefused", "WorkerAgent"]
