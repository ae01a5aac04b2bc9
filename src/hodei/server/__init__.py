"""The scheduler's gRPC face: the server, the servicer that translates proto to :mod:`hodei.scheduler` calls,
and what guards the door (authentication, the bounds on registrations and hellos, limits, connection quotas)."""

from hodei.server._server import SchedulerServer

__all__ = ["SchedulerServer"]
