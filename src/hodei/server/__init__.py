"""The scheduler's gRPC face: the server, the servicer that translates proto to :mod:`hodei.scheduler` calls,
and what guards the door (authentication, admission, limits, connection quotas).

Exported: the server and what it is built from — its limits (:class:`ServerLimits`, enforced on streams by
:class:`StreamLimits`) and its admission control (:class:`AdmissionControl` for registrations,
:class:`HelloAdmission` for the agents' hellos).
"""

from hodei.server._admission import AdmissionControl, HelloAdmission
from hodei.server._limits import ServerLimits, StreamLimits
from hodei.server._server import SchedulerServer

__all__ = ["AdmissionControl", "HelloAdmission", "SchedulerServer", "ServerLimits", "StreamLimits"]
