"""Assignments: a worker bound to a job, and how the job ended.

An :class:`Assignment` is part of the worker's record while it holds (the store keeps it with the worker, so
binding is one atomic write of one record, durable like every other, and a restart finds BUSY workers still
bound to their jobs). Its lease is the holder's: renewed in memory, like an agent's, and started afresh after
a restart.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from hodei._quoting import quote_short
from hodei.domain._validation import validate_worker_id
from hodei.domain._values import FieldViolation

__all__ = [
    "DEFAULT_ASSIGNMENT_TTL",
    "MAX_COMMAND_ARGS",
    "MAX_COMMAND_BYTES",
    "MAX_JOB_TIMEOUT",
    "MAX_OUTPUT_TAIL",
    "Assignment",
    "Job",
    "JobOutcome",
    "JobResult",
    "bounded_tail",
]

DEFAULT_ASSIGNMENT_TTL = 30.0
"""An assignment's lease when the caller names none, in seconds."""
MAX_ASSIGNMENT_TTL = 3600.0
MAX_COMMAND_ARGS = 256
MAX_COMMAND_BYTES = 64 * 1024
"""A job's command and environment together, encoded: a job is stored with its worker's record."""
MAX_JOB_TIMEOUT = 7 * 24 * 3600.0
MAX_OUTPUT_TAIL = 4096
"""The bytes of a job's output kept (its end): what the agent reports and the holder reads."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class JobOutcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class JobResult:
    """How an assignment ended: the outcome, the command's exit code (-1: none), the tail of its output."""

    outcome: JobOutcome
    exit_code: int = -1
    output_tail: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Job:
    """What an agent runs: ``command`` (argv, no shell), ``environment`` added to the agent's allow-listed one,
    ``timeout`` in seconds (None: no limit)."""

    command: tuple[str, ...]
    environment: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "environment", MappingProxyType(dict(self.environment)))

    def __hash__(self) -> int:
        return hash((self.command, frozenset(self.environment.items()), self.timeout))

    def violations(self) -> list[FieldViolation]:
        """Every invalid field, named ``job.*``; what a client sent is quoted only in short form."""
        found: list[FieldViolation] = []
        if not self.command or not self.command[0]:
            found.append(FieldViolation("job.command", "must name a program to run"))
        if len(self.command) > MAX_COMMAND_ARGS:
            found.append(
                FieldViolation(
                    "job.command", f"must have at most {MAX_COMMAND_ARGS} arguments, got {len(self.command)}"
                )
            )
        for index, argument in enumerate(self.command[:MAX_COMMAND_ARGS]):
            if "\x00" in argument:
                found.append(FieldViolation(f"job.command[{index}]", "must not contain NUL"))
        for name, value in self.environment.items():
            if not _ENV_NAME.fullmatch(name):
                found.append(
                    FieldViolation(
                        f"job.environment[{quote_short(name)}]",
                        "must be a name of letters, digits and _ (not starting with a digit), at most 128",
                    )
                )
            elif "\x00" in value:
                found.append(FieldViolation(f"job.environment[{name}]", "must not contain NUL"))
        size = self.encoded_size()
        if size > MAX_COMMAND_BYTES:
            found.append(
                FieldViolation(
                    "job", f"command and environment must take at most {MAX_COMMAND_BYTES} bytes, got {size}"
                )
            )
        if self.timeout is not None and not 0 < self.timeout <= MAX_JOB_TIMEOUT:
            found.append(
                FieldViolation("job.timeout_ms", f"must be between 1 ms and a week, got {self.timeout:g} s")
            )
        return found

    def encoded_size(self) -> int:
        return sum(len(a.encode(errors="replace")) + 2 for a in self.command) + sum(
            len(k.encode(errors="replace")) + len(v.encode(errors="replace")) + 4
            for k, v in self.environment.items()
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """A worker bound to a job. ``job`` is None when the holder uses the worker itself (nothing is delivered)."""

    assignment_id: str
    job_id: str
    worker_id: str
    incarnation: int
    lease_ttl: float = DEFAULT_ASSIGNMENT_TTL
    job: Job | None = None
    priority: int = 0
    bound_at: datetime | None = None
    # The trace of the acquire (W3C traceparent/tracestate), for the job's span on the agent: not stored.
    trace_context: Mapping[str, str] = field(default_factory=dict, compare=False)


_DRIVING = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def bounded_tail(text: str, limit: int = MAX_OUTPUT_TAIL) -> str:
    """The end of a job's output as kept and shown: control characters but tab and line ends replaced
    (U+FFFD), at most ``limit`` bytes of UTF-8, cut on a character boundary. The agent reports it so; the
    scheduler applies it again to what any agent sends."""
    # Every character is at least one byte: the last ``limit`` bytes lie within the last ``limit`` characters,
    # so only those are read, however long the text an agent sent (up to a whole message).
    data = _DRIVING.sub("\ufffd", text[-limit:]).encode(errors="replace")[-limit:]
    return data.decode(errors="ignore")  # a character cut in two at the start is dropped


def validate_job_id(job_id: str) -> list[FieldViolation]:
    """A job id has a worker id's shape (it names the assignment in logs, events and the store)."""
    return [FieldViolation("job_id", v.description) for v in validate_worker_id(job_id)]


def validate_assignment_ttl(ttl: float) -> list[FieldViolation]:
    if not 1.0 <= ttl <= MAX_ASSIGNMENT_TTL:
        return [FieldViolation("lease_ttl_ms", f"must be between 1 s and an hour, got {ttl:g} s")]
    return []
