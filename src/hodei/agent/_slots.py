"""Several workers in one agent process, over one connection: ``hodei agent --spawn N``.

As ``buildkite-agent start --spawn N`` does, one process runs ``N`` worker slots on one machine. Each slot is a
worker of its own — its id, registration, lease, incarnation, Connect stream and drain — and every slot's stream
is multiplexed over one HTTP/2 connection per scheduler address (:class:`SharedChannels`), so a host of ten
slots costs the scheduler one connection, not ten. A slot that is refused ends alone; the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from hodei.agent._agent import CHANNEL_OPTIONS, AgentRefused, WorkerAgent
from hodei.security._tls import ClientTlsConfig
from hodei.transport._channel import open_channel

__all__ = ["SharedChannels", "run_slots", "slot_ids"]

# One connection for every slot: gRPC reconnects it, at most this far apart, when it breaks (its own default
# backoff grows to two minutes); each slot still waits its own jittered delay before saying hello again.
SHARED_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 10_000),
)


def slot_ids(worker_id: str, slots: int) -> list[str]:
    """The worker ids of ``slots`` slots: the id itself for one, ``ID-1`` … ``ID-N`` for several."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    return [worker_id] if slots == 1 else [f"{worker_id}-{n}" for n in range(1, slots + 1)]


class SharedChannels:
    """One channel per scheduler address, shared by the slots of one process; closed with :meth:`aclose`."""

    def __init__(self, tls: ClientTlsConfig | None = None) -> None:
        self._tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = open_channel(target, tls=self._tls, options=SHARED_CHANNEL_OPTIONS, traced=False)
            self._channels[target] = channel
        return channel

    @contextlib.asynccontextmanager
    async def session(self, target: str) -> AsyncIterator[grpc.aio.Channel]:
        """The shared channel for one slot's session: a session that ends leaves it open for the others."""
        yield self.get(target)

    async def aclose(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


async def run_slots(slots: Sequence[WorkerAgent]) -> list[AgentRefused]:
    """Run every slot until each has ended; the refusals of those the scheduler refused (the others are not
    stopped by them)."""
    ended = await asyncio.gather(*(slot.run() for slot in slots), return_exceptions=True)
    refused: list[AgentRefused] = []
    for outcome in ended:
        if isinstance(outcome, AgentRefused):
            refused.append(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
    return refused
