"""MockWorkerProvider: a WorkerProvider that keeps its workers in memory and remembers everything."""

from __future__ import annotations

import asyncio

from hodei._ownership import DEFAULT_OWNER, owned
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerStatus
from hodei.errors import ProviderError

__all__ = ["MockWorkerProvider"]


class MockWorkerProvider:
    """Provisions nothing real. ``provisioned``, ``stopped`` and ``destroyed`` list ids in call order;
    ``running`` holds the live workers. ``fail_provision`` / ``fail_destroy`` make the next calls fail.
    ``owner`` is written on each worker it provisions (the ``hodei.owner`` label of its config)."""

    def __init__(self, *, delay: float = 0.0, owner: str = DEFAULT_OWNER) -> None:
        self.delay = delay
        self.owner = owner
        self.running: dict[str, DynamicWorker] = {}
        self.provisioned: list[str] = []
        self.stopped: list[str] = []
        self.destroyed: list[str] = []
        self._provision_failures: list[ProviderError] = []
        self._destroy_failures: list[ProviderError] = []

    def fail_provision(self, times: int = 1, error: ProviderError | None = None) -> None:
        self._provision_failures += [error or ProviderError("injected provisioning failure")] * times

    def fail_destroy(self, times: int = 1, error: ProviderError | None = None) -> None:
        self._destroy_failures += [error or ProviderError("injected destroy failure")] * times

    @property
    def orphans(self) -> list[str]:
        """Workers provisioned and never destroyed."""
        return sorted(self.running)

    async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._provision_failures:
            raise self._provision_failures.pop(0)
        if worker_id in self.running:
            raise ProviderError(
                f"worker {worker_id!r} already exists", worker_id=worker_id, hint="choose another worker id"
            )
        config = owned(config, self.owner)
        worker = DynamicWorker(worker_id, config.worker_type, config, WorkerStatus.PROVISIONING)
        self.running[worker_id] = worker
        self.provisioned.append(worker_id)
        return worker

    async def status(self, worker_id: str) -> WorkerStatus | None:
        return WorkerStatus.AVAILABLE if worker_id in self.running else None

    async def stop(self, worker_id: str, *, grace: float = 10.0) -> None:
        if worker_id in self.running:
            self.stopped.append(worker_id)

    async def destroy(self, worker_id: str) -> None:
        if self._destroy_failures:
            raise self._destroy_failures.pop(0)
        if self.running.pop(worker_id, None) is not None:
            self.destroyed.append(worker_id)

    async def list_workers(self) -> list[DynamicWorker]:
        return list(self.running.values())
