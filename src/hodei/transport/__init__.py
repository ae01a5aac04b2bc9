"""The wire: the gRPC client of the scheduler port, the one maker of channels to a scheduler, and the codec
between proto and domain."""

from hodei.transport._channel import open_channel
from hodei.transport._client import Credential, SchedulerPortClient

__all__ = ["Credential", "SchedulerPortClient", "open_channel"]
