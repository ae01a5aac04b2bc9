"""Between an agent's sessions: its failures in a row, what it says about them, and how long it waits.

A failed connection (or a stream that broke) counts as a failure and is told at debug level, a stream that was up
breaking as a warning, and why the agent cannot connect (with what to check) at the first failure of a run, then
at most once per ``failure_log_interval`` seconds. The wait is the agent's own jittered backoff, growing with the
failures; a scheduler busy with other hellos is no failure: the agent waits the delay it advised.

The records are the agent's: they go out through the logger it hands over (``hodei.agent._agent``'s), the one an
operator filters the agent's words by.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hodei.agent._config import AgentConfig
from hodei.errors import ErrorCode, SchedulerError
from hodei.transport._diagnosis import unreachable_reason

__all__ = ["Reconnection"]


def _advised(error: SchedulerError) -> float | None:
    """The delay a busy scheduler advised (``RESOURCE_EXHAUSTED`` with RetryInfo), or None."""
    if error.code is ErrorCode.RESOURCE_EXHAUSTED and error.retry_after is not None:
        return max(error.retry_after, 0.0)
    return None


class Reconnection:
    """One agent's reconnections: ``failures`` (in a row, 0 again once a stream is up), :meth:`failed` for a
    session that ended in a transient error, :meth:`delay` for the wait before the next attempt."""

    def __init__(self, config: AgentConfig, random: Callable[[], float], log: logging.Logger) -> None:
        self._config = config
        self._random = random
        self._log = log
        self.failures = 0
        # When agent.cannot_connect was last logged, in this run of failures.
        self._warned_at: float | None = None
        # The addresses this agent has had a stream with: TLS cannot be what fails there (same settings), so
        # their failures are not diagnosed by a TLS handshake, which a whole fleet would otherwise send to a
        # scheduler on its way back from a restart.
        self._reached: set[str] = set()

    def _fields(self, **fields: object) -> dict[str, object]:
        return {"worker_id": self._config.worker_id, **fields}

    async def failed(
        self, error: SchedulerError, target: str, *, was_up: bool, ever_connected: bool
    ) -> float | None:
        """Count and tell the ``error`` that ended a session with ``target`` (``was_up``: its stream had been
        acknowledged); the delay the scheduler advised instead, if it was only busy (no failure then)."""
        if was_up:
            self._reached.add(target)
        advised = _advised(error)
        if advised is None:
            await self._report_failure(error, target, was_up=was_up, ever_connected=ever_connected)
            self.failures += 1
        else:  # the scheduler is busy and said when to come back: no failure, no longer backoff
            self._log.debug(
                "agent.hello_deferred", extra=self._fields(scheduler=target, retry_after_s=advised)
            )
        return advised

    def delay(self, advised: float | None) -> float:
        """The wait before the next attempt: the ``advised`` one, jittered, or the backoff of the failures."""
        if advised is None:
            return self._config.reconnect_delay(max(self.failures - 1, 0), self._random())
        return self._config.advised_delay(advised, self._random())

    async def _report_failure(
        self, error: SchedulerError, target: str, *, was_up: bool, ever_connected: bool
    ) -> None:
        """Log a broken stream or a failed connection: each at debug level; a stream that was up breaking, as a
        warning; and why the agent cannot connect (with what to check) at its first failure in a row, then at
        most once per ``failure_log_interval`` seconds, as a warning."""
        fields = self._fields(scheduler=target, code=error.code.name, error=error.message)
        self._log.log(logging.WARNING if was_up else logging.DEBUG, "agent.stream_broken", extra=fields)
        if was_up:
            self._warned_at = None  # a new run of failures: say at once if it cannot come back
            return
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < self._config.failure_log_interval:
            return
        self._warned_at = now
        reason = await self._why_unreachable(error, target)
        self._log.warning(
            "agent.cannot_connect",
            extra=self._fields(
                scheduler=target,
                code=error.code.name,
                reason=reason,
                failures=self.failures + 1,
                ever_connected=ever_connected,
            ),
        )

    async def _why_unreachable(self, error: SchedulerError, target: str) -> str:
        if error.code is not ErrorCode.UNAVAILABLE:
            if error.code is ErrorCode.DEADLINE_EXCEEDED:
                return (
                    f"no answer from {target} within {self._config.hello_timeout} s: check the address "
                    "(--scheduler) and any firewall on the way"
                )
            return f"the scheduler at {target} answered {error.code.name}: it is retried"
        tls = self._config.tls
        return await asyncio.to_thread(
            unreachable_reason,
            target,
            error.message,
            tls=tls is not None,
            client_cert=tls is not None and tls.cert_file is not None,
            probe_tls=target not in self._reached,
        )
