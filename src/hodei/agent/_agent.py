"""WorkerAgent: runs inside a worker, keeps it registered and heartbeating, and obeys the scheduler.

It connects (the hello registers the worker, or attaches to the control plane's registration), heartbeats at
the interval the scheduler asks for, and carries out commands: drain (finish work, take no more, report
drained), shut down (drain, unregister, exit), re-register (reconnect with a new incarnation), run a job and
report how it ended (:mod:`hodei.agent._jobs`), cancel it. A broken stream
or an unreachable scheduler sends it to the next scheduler address after a jittered backoff, with a new
incarnation; a scheduler busy with other hellos says when to come back, and the agent comes back then (with
jitter): :mod:`hodei.agent._reconnect` counts the failures, says why, and times the wait. A permanent refusal
(invalid data, refused credentials, a newer incarnation elsewhere) ends it with :class:`AgentRefused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from hodei._waiting import wait_until_set
from hodei.agent._config import AgentConfig
from hodei.agent._executor import ShellExecutor
from hodei.agent._jobs import AgentJobs
from hodei.agent._reconnect import Reconnection
from hodei.agent._usage import host_usage
from hodei.domain import MAX_OUTPUT_TAIL, ResourceUsage, WorkerStatus
from hodei.errors import HodeiError, SchedulerError
from hodei.lifecycle import CommandKind, WorkerCommand
from hodei.observability._metrics import AgentMetrics
from hodei.security._access import authorization_metadata
from hodei.transport._channel import open_channel
from hodei.transport._client import SchedulerPortClient
from hodei.transport._stream import ConnectStream, is_transient_for_stream

__all__ = ["CHANNEL_OPTIONS", "AgentRefused", "WorkerAgent"]

log = logging.getLogger(__name__)

# Pings on an idle stream notice a scheduler that vanished without closing the connection.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC times a keepalive ping out after this, not after keepalive_timeout_ms (its default is 60 s): a
    # black-holed connection is then noticed within 10 s + 5 s.
    ("grpc.http2.ping_timeout_ms", 5_000),
    # Each session dials afresh: the agent's own jittered backoff paces its reconnections, not the reconnect
    # backoff (growing to two minutes) of a connection that gRPC shares between a process's channels.
    ("grpc.use_local_subchannel_pool", 1),
)


class SharedChannelsLike(Protocol):
    """Where the slots of one agent process get the channel they share (:class:`hodei.agent._slots.SharedChannels`)."""

    def session(self, target: str) -> contextlib.AbstractAsyncContextManager[grpc.aio.Channel]: ...


class AgentRefused(HodeiError):
    """The scheduler refused this worker for good; ``cause`` says why."""

    def __init__(self, worker_id: str, cause: SchedulerError) -> None:
        self.worker_id = worker_id
        self.cause = cause
        super().__init__(f"the scheduler refused worker {worker_id!r}: {cause}")


def next_beat(due: float, now: float, interval: float) -> float:
    """When the heartbeat after the one due at ``due`` is due, at ``now``: one ``interval`` later, on the same
    beat — or, when that moment has passed already (the agent fell more than an interval behind), one
    ``interval`` from ``now``, with no burst of heartbeats to catch up."""
    following = due + interval
    return following if following >= now else now + interval


class _Reregister(Exception):
    """The scheduler asked for a fresh registration."""


class WorkerAgent:
    """``await WorkerAgent(config).run()`` until :meth:`request_shutdown` (SIGTERM) or a shutdown command.

    Observable state for callers and tests: ``connected`` (an event set while a stream is up), ``incarnation``,
    ``connections`` (streams opened), ``heartbeats_sent``, ``commands`` (received, in order), ``draining``,
    ``unregistered``, ``credential``, ``jobs`` (the jobs it runs, :class:`AgentJobs`). ``metrics`` (default: a
    private registry's) counts stream connects by result, reconnects and heartbeats.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        random: Callable[[], float] = random.random,
        usage: Callable[[], ResourceUsage] = host_usage.sample,
        metrics: AgentMetrics | None = None,
        channels: SharedChannelsLike | None = None,
    ) -> None:
        self.config = config
        self._shared = channels
        self.metrics = metrics or AgentMetrics()
        self._usage = usage
        self.incarnation = time.time_ns()
        self._acknowledged = False  # a hello of this incarnation was answered: the next one is new
        self.connected = asyncio.Event()
        self.connections = 0
        self.commands: list[WorkerCommand] = []
        self.draining = False
        self.unregistered = False
        self.heartbeat_interval = 5.0
        self.heartbeats_sent = 0
        executor = ShellExecutor(
            config.work_dir / config.worker_id, tail_bytes=MAX_OUTPUT_TAIL, kill_grace=config.job_kill_grace
        )
        self.jobs = AgentJobs(executor, config.worker_id)
        self._stopping = asyncio.Event()
        self._reconnection = Reconnection(config, random, log)
        self._target_index = 0
        self._credential = ""  # the worker credential the scheduler handed over; replaces config.token

    @property
    def running_jobs(self) -> list[str]:
        """The assignments whose job runs here now."""
        return self.jobs.running

    @property
    def credential(self) -> str:
        """The worker credential the scheduler handed this agent (kept for reconnecting and unregistering);
        empty until it has one. A secret: for the agent's own use and for tests."""
        return self._credential

    def _token(self) -> str:
        """What the agent presents now: its worker credential once it has one, else what it was given."""
        return self._credential or self.config.token or ""

    def _channel(self, target: str) -> contextlib.AbstractAsyncContextManager[grpc.aio.Channel]:
        """A session's channel: a fresh one of its own, or the one its process's slots share (``--spawn``)."""
        if self._shared is not None:
            return self._shared.session(target)
        # Not traced: its Connect stream never is (tracing.UNTRACED_METHODS), so no interceptor stands in its way.
        own: contextlib.AbstractAsyncContextManager[grpc.aio.Channel] = open_channel(
            target, tls=self.config.tls, options=CHANNEL_OPTIONS, traced=False
        )
        return own

    def _fields(self, **fields: object) -> dict[str, object]:
        return {"worker_id": self.config.worker_id, **fields}

    @property
    def target(self) -> str:
        return self.config.schedulers[self._target_index % len(self.config.schedulers)]

    def request_shutdown(self, reason: str = "requested") -> None:
        """Drain, unregister and return from :meth:`run` (what SIGTERM does)."""
        if self._stopping.is_set():
            return
        log.info("agent.shutdown_requested", extra={"worker_id": self.config.worker_id, "reason": reason})
        self._stopping.set()

    async def run(self) -> None:
        orphan_watch = asyncio.create_task(self._watch_parent()) if self.config.parent_pid else None
        try:
            while not self._stopping.is_set():
                advised: float | None = None
                try:
                    await self._session(self.target)
                except _Reregister:
                    self._reconnection.failures = 0
                except SchedulerError as error:
                    if not is_transient_for_stream(error):
                        log.error(
                            "agent.refused", extra=self._fields(code=error.code.name, error=error.message)
                        )
                        raise AgentRefused(self.config.worker_id, error) from error
                    advised = await self._reconnection.failed(
                        error,
                        self.target,
                        was_up=self.connected.is_set(),
                        ever_connected=self.connections > 0,
                    )
                    self._target_index += 1
                finally:
                    self.connected.clear()
                if self._stopping.is_set():
                    break
                delay = self._reconnection.delay(advised)
                log.debug(  # every attempt: quiet; agent.cannot_connect says why, rate-limited
                    "agent.reconnecting",
                    extra=self._fields(
                        scheduler=self.target, delay_s=round(delay, 3), failures=self._reconnection.failures
                    ),
                )
                await self._pause(delay)
                if self._acknowledged:
                    # A new incarnation fences the old stream. A hello never answered (its answer lost, or the
                    # scheduler unreachable) is retried as it was: the same registration, which a single-use
                    # join token still admits.
                    self.incarnation += 1
                    self._acknowledged = False
        finally:
            if orphan_watch is not None:
                orphan_watch.cancel()
            # A job still running is cancelled (SIGTERM, SIGKILL after the grace); one that hangs even then, killed.
            await self.jobs.aclose(2 * self.config.job_kill_grace + 1.0)
            if self._stopping.is_set() and not self.unregistered:
                await self._unregister()

    async def _watch_parent(self) -> None:
        while os.getppid() == self.config.parent_pid:  # noqa: ASYNC110 - a parent's death has no event
            await asyncio.sleep(self.config.parent_check_interval)
        self.request_shutdown(f"the control plane (pid {self.config.parent_pid}) is gone")

    async def _pause(self, seconds: float) -> None:
        await wait_until_set(self._stopping, seconds)

    async def _session(self, target: str) -> None:
        async with self._channel(target) as channel:
            token = self._token()
            stream = ConnectStream(channel, metadata=authorization_metadata(token) if token else ())
            try:
                try:
                    ack = await stream.open(
                        self.config.worker(self.incarnation),
                        self.jobs.unreported,  # a job that ended unreported is still the scheduler's to end
                        timeout=self.config.hello_timeout,
                        accept_timeout=self.config.accept_timeout,
                    )
                except SchedulerError as error:
                    self.metrics.stream_connects.labels(error.code.name.lower()).inc()
                    raise
                self.metrics.stream_connects.labels("ok").inc()
                self._acknowledged = True
                if ack.credential:
                    self._credential = ack.credential
                if self.connections:
                    self.metrics.reconnects.inc()
                self.heartbeat_interval = ack.heartbeat_interval
                self.connections += 1
                self._reconnection.failures = 0
                self.connected.set()
                log.info(
                    "agent.connected",
                    extra=self._fields(
                        scheduler=target,
                        incarnation=self.incarnation,
                        heartbeat_interval_s=self.heartbeat_interval,
                    ),
                )
                await self._serve(stream, channel)
            finally:
                stream.cancel()

    async def _serve(self, stream: ConnectStream, channel: grpc.aio.Channel) -> None:
        # Cancelling a task that waits on the call would cancel the whole call, so the heartbeat loop stops by
        # itself at shutdown and the reader keeps reading while the agent says goodbye on the same stream.
        heartbeats: asyncio.Task[Any] = asyncio.create_task(self._heartbeat(stream))
        drains: set[asyncio.Task[None]] = set()
        commands: asyncio.Task[Any] = asyncio.create_task(self._obey(stream, drains))
        # Results of jobs that ended, this session's or earlier (while no stream was up), in the order they ended.
        reports: asyncio.Task[Any] = asyncio.create_task(self._report_jobs(stream))
        try:
            done, _ = await asyncio.wait({heartbeats, commands, reports}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if (error := task.exception()) is not None:
                    raise error
            if self._stopping.is_set():
                await self._farewell(stream, channel)
                with contextlib.suppress(TimeoutError, SchedulerError):
                    await asyncio.wait_for(asyncio.shield(commands), self.config.farewell_timeout)
        finally:
            tasks = (heartbeats, commands, reports, *drains)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _heartbeat(self, stream: ConnectStream) -> None:
        # A metronome: each heartbeat is due one interval after the previous one was due, not after it was sent,
        # so the time a heartbeat takes (a busy loop, a slow write) does not stretch the interval the scheduler
        # sees. An agent more than an interval behind starts counting again from now rather than catching up.
        loop = asyncio.get_running_loop()
        sequence = 0
        due = loop.time() + self.heartbeat_interval
        while not self._stopping.is_set():
            if await wait_until_set(self._stopping, max(0.0, due - loop.time())):
                return
            due = next_beat(due, loop.time(), self.heartbeat_interval)
            sequence += 1
            usage = self._usage()
            await stream.heartbeat(
                sequence,
                ResourceUsage(usage.cpu_percent, usage.memory_used_mb, len(self.jobs.running)),
            )
            self.heartbeats_sent += 1
            self.metrics.heartbeats.inc()

    async def _report_jobs(self, stream: ConnectStream) -> None:
        while True:
            result = await self.jobs.next_result()
            await stream.job_finished(*result)
            self.jobs.sent(result)

    async def _obey(self, stream: ConnectStream, drains: set[asyncio.Task[None]]) -> None:
        async for command in stream.commands():
            self.commands.append(command)
            log.info("agent.command", extra=self._fields(command=command.kind.value, reason=command.reason))
            if command.kind is CommandKind.RUN_JOB:
                assert command.assignment is not None  # the codec makes no RUN_JOB without one
                self.jobs.start(command.assignment, refuse="draining" if self.draining else "")
            elif command.kind is CommandKind.CANCEL_JOB:
                self.jobs.cancel(command.assignment_id, command.reason)
            elif command.kind is CommandKind.DRAIN:
                # Waited for in a task of its own: a cancel or a shutdown is still obeyed while the job runs.
                deadline = command.deadline or self.config.drain_timeout
                drains.add(asyncio.create_task(self._drain(stream, command.reason, deadline)))
            elif command.kind is CommandKind.SHUTDOWN:
                self.request_shutdown(f"the scheduler asked: {command.reason}")
            else:
                raise _Reregister(command.reason)

    async def _drain(self, stream: ConnectStream, reason: str, deadline: float) -> None:
        """Take no new job; wait ``deadline`` seconds for the running one, then cancel it; report drained once
        its result is sent."""
        self.draining = True
        log.info(
            "agent.draining",
            extra=self._fields(reason=reason, running_jobs=len(self.jobs.running), deadline_s=deadline),
        )
        if self.jobs.unreported:
            await stream.report(WorkerStatus.DRAINING, reason=reason or "draining")
            if not await self.jobs.idle(deadline):
                log.warning(
                    "agent.drain_deadline", extra=self._fields(jobs=self.jobs.running, deadline_s=deadline)
                )
                self.jobs.cancel_all("the drain deadline passed")
                await self.jobs.idle(None)  # ended within the executor's kill grace
            await self.jobs.reported(self.config.farewell_timeout)
        await stream.report(WorkerStatus.DRAINING, drained=True, reason=reason or "drained")

    async def _farewell(self, stream: ConnectStream, channel: grpc.aio.Channel) -> None:
        """Drain (the running job given ``drain_timeout``), then unregister on the same connection, then close
        the stream."""
        bound = self.config.farewell_timeout
        if self.jobs.unreported:
            bound += self.config.drain_timeout + 2 * self.config.job_kill_grace
        with contextlib.suppress(SchedulerError, TimeoutError):
            async with asyncio.timeout(bound):
                await self._drain(stream, "shutting down", self.config.drain_timeout)
        await self._unregister(channel)
        await stream.close()

    async def _unregister(self, channel: grpc.aio.Channel | None = None) -> None:
        if self.unregistered:
            return
        if channel is None:
            client = SchedulerPortClient(
                self.target, options=CHANNEL_OPTIONS, credential=self._token, tls=self.config.tls
            )
        else:
            client = SchedulerPortClient(channel, credential=self._token)
        try:
            # Fenced by this agent's incarnation: a farewell that arrives after a successor's hello (the same
            # worker id, a newer incarnation) is refused, and the successor stays registered and connected.
            await client.unregister_worker(
                self.config.worker_id, incarnation=self.incarnation, timeout=self.config.farewell_timeout
            )
            self.unregistered = True
            log.info("agent.unregistered", extra=self._fields())
        except SchedulerError as error:
            # Its lease will expire.
            log.warning(
                "agent.unregister_failed", extra=self._fields(code=error.code.name, error=error.message)
            )
        finally:
            await client.close()
