"""What one connected agent's session costs the scheduler in Python objects, and that its command queue
behaves as the asyncio.Queue it replaces (for its one reader)."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from hodei.lifecycle import CommandKind, WorkerCommand
from hodei.scheduler._sessions import AgentSession, CommandQueue


def test_a_session_and_its_command_queue_take_under_half_a_kilobyte() -> None:
    sessions: list[AgentSession] = []
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        sessions.extend(AgentSession(f"w-{i:04d}", 1) for i in range(1000))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_session = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / len(sessions)

    print(f"\n{per_session:.0f} bytes per AgentSession")
    assert per_session < 512  # an asyncio.Queue alone took 3.4 KB


async def test_the_command_queue_hands_commands_over_in_order_to_a_waiting_reader() -> None:
    queue = CommandQueue()
    drain = WorkerCommand(CommandKind.DRAIN, "maintenance", 2.0)
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # the reader waits
    queue.put_nowait(drain)
    queue.put_nowait(None)

    assert await asyncio.wait_for(reader, 5) == drain
    assert (queue.qsize(), queue.empty()) == (1, False)
    assert queue.get_nowait() is None
    assert (queue.qsize(), queue.empty()) == (0, True)
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_cancelled_reader_leaves_the_queue_usable() -> None:
    queue = CommandQueue()
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    queue.put_nowait(None)

    assert await asyncio.wait_for(queue.get(), 5) is None
