"""The wire: the gRPC client of the scheduler port, and the codec between proto and domain."""

from hodei.transport._client import Credential, SchedulerPortClient

__all__ = ["Credential", "SchedulerPortClient"]
