"""Waiting for an event, with a deadline, without losing a cancellation.

Python 3.11's ``asyncio.wait_for`` runs what it waits on as a task of its own; when that task ends in the same
turn of the loop as the waiting task is cancelled, ``wait_for`` returns its result and the cancellation is
lost. A loop that waits for "a wake-up or a timeout" and is stopped by cancellation then never stops (the
autoscaler's stop hung on it, its wake-up event being set at the moment it was cancelled). ``asyncio.timeout``
waits on the event itself and tells its own expiry from a cancellation, so neither is lost.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_until_set"]


async def wait_until_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds have passed (False). A cancellation of the
    waiting task always propagates."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
