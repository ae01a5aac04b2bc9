"""Registering workers with the scheduler: the adapter, its configuration and its results."""

from hodei.registration.adapter import BatchRegistrationResult, WorkerRegistrationAdapter
from hodei.registration.config import RegistrationConfig

__all__ = ["BatchRegistrationResult", "RegistrationConfig", "WorkerRegistrationAdapter"]
