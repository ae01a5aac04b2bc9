"""Registering workers with the scheduler: the adapter, its configuration and its results."""

from hodei.registration._adapter import BatchRegistrationResult, DrainResult, WorkerRegistrationAdapter
from hodei.registration._config import RegistrationConfig

__all__ = ["BatchRegistrationResult", "DrainResult", "RegistrationConfig", "WorkerRegistrationAdapter"]
