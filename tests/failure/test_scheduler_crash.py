"""A scheduler process killed with SIGKILL in the middle of a registration batch, then started again on the same
port: the control plane's retries carry the batch through, and every worker ends registered exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    RegistrationConfig,
    RegistrationReceipt,
    SchedulerError,
    SchedulerPortClient,
    WorkerRegistrationAdapter,
)
from hodei.bench.processes import ServerProcess
from hodei.management import WorkerManagementService
from hodei.testing import MockWorkerProvider
from tests.helpers import AttemptRecordingClient, wait_until

pytestmark = pytest.mark.timeout(60)

QUICK_RECONNECTS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)
WORKERS = 200
# Small calls, two at a time, with retries that outlast a restart: up to 80 attempts, 50-250 ms apart.
CONFIG = RegistrationConfig(
    max_retries=80, base_backoff=0.05, max_backoff=0.25, batch_size=5, batch_concurrency=2
)


async def registered(address: str) -> list[str]:
    async with SchedulerPortClient(address, options=QUICK_RECONNECTS) as reader:
        page = await reader.list_workers(page_size=1000)
        assert page.next_page_token == ""
        return [record.worker_id for record in page.workers]


@pytest.mark.parametrize("store", ["sqlite", "memory"])
async def test_a_scheduler_killed_mid_batch_and_restarted_ends_with_every_worker_registered_once_and_none_orphaned(
    tmp_path: Path, store: str
) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}" if store == "sqlite" else "memory"
    first = await ServerProcess.scheduler(store=url, log=tmp_path / "scheduler.log").start()
    restarted: ServerProcess | None = None
    client = ReceiptRecordingClient(first.address, options=QUICK_RECONNECTS)
    provider = MockWorkerProvider()
    service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(client, CONFIG))
    try:
        provisioning = asyncio.create_task(service.provision_workers(WORKERS, DynamicWorkerConfig()))
        await wait_until(lambda: client.attempts.count("OK") >= 10, timeout=30)
        first.kill()
        assert client.attempts.count("OK") < WORKERS // CONFIG.batch_size, "the crash must land mid-batch"
        restarted_at = datetime.now(UTC)
        restarted = await ServerProcess.scheduler(
            store=url, port=first.port, log=tmp_path / "scheduler.log"
        ).start()
        results = await asyncio.wait_for(provisioning, 45)
        after_restart = await registered(restarted.address)
    finally:
        await client.close()
        first.kill()
        if restarted is not None:
            restarted.kill()

    assert [r.error for r in results if not r.ok] == []
    ids = [r.worker_id for r in results]
    assert provider.orphans == sorted(ids) and provider.destroyed == []  # all kept: all registered
    assert "UNAVAILABLE" in client.attempts  # the crash was seen, and retried through
    assert len(after_restart) == len(set(after_restart))  # nobody twice
    if store == "sqlite":
        assert sorted(after_restart) == sorted(ids)
    else:
        # In memory, what the first process acknowledged died with it; the rest was registered after the restart.
        acknowledged_before = {i for i, at in client.registered_at.items() if at < restarted_at}
        assert 0 < len(acknowledged_before) < WORKERS
        assert sorted(after_restart) == sorted(set(ids) - acknowledged_before)


class ReceiptRecordingClient(AttemptRecordingClient):
    """Remembers when the scheduler said it registered each worker (its first acknowledgement)."""

    def __init__(self, target: str, **options: Any) -> None:
        super().__init__(target, **options)
        self.registered_at: dict[str, datetime] = {}

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[RegistrationReceipt | SchedulerError]:
        outcomes = await super().register_workers(workers, timeout=timeout)
        for worker, outcome in zip(workers, outcomes, strict=True):
            if isinstance(outcome, RegistrationReceipt) and outcome.record.registered_at is not None:
                self.registered_at.setdefault(worker.worker_id, outcome.record.registered_at)
        return outcomes
