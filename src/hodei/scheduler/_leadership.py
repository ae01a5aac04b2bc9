"""Leadership for a scheduler that has its registry to itself: it always leads.

Replicas that share a database elect one leader through it (``hodei.stores.PostgresLeadership``).
"""

from __future__ import annotations

__all__ = ["SoleLeader"]


class SoleLeader:
    """The :class:`~hodei.ports.Leadership` of the only scheduler of a registry."""

    async def acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None
