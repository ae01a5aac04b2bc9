"""The scheduler's gRPC face: the server, the servicer that translates proto to :mod:`hodei.scheduler` calls,
and what guards the door (authentication, the bounds on registrations and hellos, limits, connection quotas).

Exported: the server and what it is built from — its limits (:class:`ServerLimits`, enforced on streams by
:class:`StreamLimits`) and its bounds (:class:`RegistrationBound` on registrations,
:class:`HelloBound` on the agents' hellos), and :class:`MethodInterceptor`, which wraps chosen methods' handlers
inside them.
"""

from hodei.server._bounds import HelloBound, RegistrationBound
from hodei.server._interception import MethodInterceptor
from hodei.server._limits import ServerLimits, StreamLimits
from hodei.server._server import SchedulerServer

__all__ = [
    "HelloBound",
    "MethodInterceptor",
    "RegistrationBound",
    "SchedulerServer",
    "ServerLimits",
    "StreamLimits",
]
