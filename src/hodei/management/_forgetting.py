"""Unregistrations: a rollback makes sure the scheduler forgets a worker whose registration was given up.

A last attempt that timed out (or a cancelled one) may have been written all the same, and a push registration
holds no lease that would ever expire it. One unregistration now; if the scheduler could not be told, it keeps
unregistering in the background until the scheduler is known to have forgotten the worker.
"""

from __future__ import annotations

import asyncio
import logging

from hodei.errors import SchedulerError, StaleIncarnation
from hodei.ports import UnregistrationStatus
from hodei.registration._adapter import WorkerRegistrationAdapter

__all__ = ["SETTLE_MARGIN", "UNREGISTRATION_PERSISTENCE", "Unregistrations"]

log = logging.getLogger("hodei.management._service")  # the service's events, wherever they are logged from

UNREGISTRATION_PERSISTENCE = 60.0
"""How long (seconds) a rollback keeps trying to unregister a worker in the background when the scheduler
could not be told at once."""
SETTLE_MARGIN = 0.2
"""Seconds beyond an attempt's deadline for the scheduler to have dropped (or written) it."""


class Unregistrations:
    """The rollbacks' unregistrations still retrying in the background; :meth:`aclose` stops them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    async def forget(
        self, registration: WorkerRegistrationAdapter, worker_id: str, incarnation: int | None
    ) -> None:
        timeout = min(registration.config.registration_timeout, 2.0)
        try:
            await registration.port.unregister_worker(worker_id, incarnation=incarnation, timeout=timeout)
        except StaleIncarnation:  # a newer registration of the worker: not ours to remove
            return
        except SchedulerError:
            task = asyncio.create_task(
                _keep_forgetting(registration, worker_id, incarnation, timeout),
                name=f"hodei-unregister-{worker_id}",
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _keep_forgetting(
    registration: WorkerRegistrationAdapter, worker_id: str, incarnation: int | None, timeout: float
) -> None:
    """Unregister until the scheduler says, twice with ``registration_timeout`` between, that it does not
    know the worker (at most :data:`UNREGISTRATION_PERSISTENCE` seconds).

    The attempts and the unregistrations the network held reach the scheduler when it heals, and it serves
    each call in a task of its own: an attempt may be written after an unregistration found nothing. Any
    attempt the scheduler received before it answered is written or dropped by its deadline, so an answer
    ``NOT_REGISTERED`` that comes ``registration_timeout`` after an earlier answer is final. The
    unregistration is fenced by ``incarnation``: it never removes a newer registration.
    """
    config = registration.config
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + UNREGISTRATION_PERSISTENCE
    retry = 0
    answered = False
    while loop.time() < give_up_at:
        try:
            status = await registration.port.unregister_worker(
                worker_id, incarnation=incarnation, timeout=timeout
            )
        except StaleIncarnation:
            return
        except SchedulerError:
            retry += 1
            await asyncio.sleep(max(config.backoff(retry), 0.05))  # the adapter's backoff, never a spin
            continue
        if answered and status is UnregistrationStatus.NOT_REGISTERED:
            log.info("provisioning.unregistered", extra={"worker_id": worker_id})
            return
        answered = True
        await asyncio.sleep(config.registration_timeout + SETTLE_MARGIN)
    log.error("provisioning.unregistration_unconfirmed", extra={"worker_id": worker_id})
