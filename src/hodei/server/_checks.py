"""What the servicer checks of a request itself, before the scheduler sees it (the rest the codec and the registry
check)."""

from __future__ import annotations

from hodei._quoting import quote_short
from hodei.domain import FieldViolation, validate_reason, validate_worker_id
from hodei.errors import InvalidWorkerData, WorkerNotFound

__all__ = ["check_reason", "invalid", "not_found", "registrable"]


def invalid(field: str, description: str) -> InvalidWorkerData:
    return InvalidWorkerData(f"{field} {description}", violations=[FieldViolation(field, description)])


def check_reason(reason: str, field: str = "reason") -> None:
    """Raise InvalidWorkerData for a reason too long or holding control characters (it reaches events, logs
    and terminals)."""
    if violations := validate_reason(reason, field):
        raise InvalidWorkerData(str(violations[0]), violations=violations)


def not_found(worker_id: str) -> WorkerNotFound:
    return WorkerNotFound(f"worker {quote_short(worker_id)} is not registered", worker_id=worker_id)


def registrable(worker_id: str) -> bool:
    """Whether a worker of this id could be registered at all (if not, the store need not be asked)."""
    return not validate_worker_id(worker_id)
