"""The scheduler's gRPC face: the server, the servicer that translates proto to :mod:`hodei.scheduler` calls,
and what guards the door (authentication, the bounds on registrations and hellos, limits, connection quotas).

Exported: the server and what it is built from — its limits (:class:`ServerLimits`, enforced on streams by
:class:`StreamLimits`) and its bounds (:class:`RegistrationBound` on registrations,
:class:`HelloBound` on the agents' hellos).
"""

from hodei.server._bounds import HelloBound, RegistrationBound
from hodei.server._limits import ServerLimits, StreamLimits
from hodei.server._server import SchedulerServer

__all__ = ["HelloBound", "RegistrationBound", "SchedulerServer", "ServerLimits", "StreamLimits"]
