"""A registration is validated once on each side: by the client before it sends, by the scheduler before it
writes, whichever way the registration comes (one worker, a batch, an agent's hello; a join token or none).

Both sides run in this process over real gRPC on loopback; spies count how often the rules run on a worker's
config part (``validate_worker_fields``, through ``DynamicWorkerConfig.violations``) and on its id
(``validate_worker_id``, the first rule of every worker and record).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from hodei import ErrorCode, WorkerRegistrationAdapter
from hodei.agent import AgentConfig, WorkerAgent
from hodei.domain import DynamicWorker, DynamicWorkerConfig, FieldViolation, WorkerType, _validation, _workers
from hodei.errors import RegistrationFailed
from hodei.registration import RegistrationConfig
from hodei.security import AccessPolicy, SchedulerSecurity, TokenAuthority
from hodei.testing import EmbeddedScheduler

AUTHORITY = TokenAuthority(b"k" * 48)


@pytest.fixture
def rules_run(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each rule ran, from now on."""
    counts: Counter[str] = Counter()

    def spy(name: str, rule: Callable[..., list[FieldViolation]]) -> Callable[..., list[FieldViolation]]:
        def counted(*args: Any, **kwargs: Any) -> list[FieldViolation]:
            counts[name] += 1
            return rule(*args, **kwargs)

        return counted

    # A config's own rules, and a record's made in no shape (validate_record, in _workers).
    monkeypatch.setattr(_workers, "validate_worker_fields", spy("config", _validation.validate_worker_fields))
    id_rule = spy("id", _validation.validate_worker_id)
    monkeypatch.setattr(_workers, "validate_worker_id", id_rule)  # a worker's and a record's (validate_*)
    monkeypatch.setattr(_validation, "validate_worker_id", id_rule)  # inside validate_worker_fields
    return counts


@pytest.fixture(params=[False, True], ids=["no auth", "tokens"])
def tokens(request: pytest.FixtureRequest) -> bool:
    """Whether the scheduler wants tokens (a join token's spending asks for the scheduler's check first)."""
    return bool(request.param)


@pytest_asyncio.fixture
async def scheduler(tokens: bool) -> AsyncIterator[EmbeddedScheduler]:
    security = SchedulerSecurity(access=AccessPolicy(AUTHORITY)) if tokens else None
    async with EmbeddedScheduler(security=security) as embedded:
        yield embedded


def token(tokens: bool, worker_id: str | None = None) -> str | None:
    """With tokens on: a join token for ``worker_id``, or an operator's token; None without."""
    if not tokens:
        return None
    if worker_id is None:
        return AUTHORITY.mint_operator_token("ops")
    return AUTHORITY.mint_join_token(worker_id, ttl=60)


def new_config(**fields: Any) -> DynamicWorkerConfig:
    """A config of its own (one shared by tests would carry the verdict a test before found)."""
    return DynamicWorkerConfig(**{"cpu_cores": 4, "memory_mb": 8192, "labels": {"zone": "a"}, **fields})


async def test_one_registration_runs_the_rules_once_on_the_client_and_once_on_the_scheduler(
    scheduler: EmbeddedScheduler, tokens: bool, rules_run: Counter[str]
) -> None:
    adapter = WorkerRegistrationAdapter(scheduler.client(credential=token(tokens, "w-1")))

    await adapter.register_worker(DynamicWorker("w-1", WorkerType.DOCKER, new_config(), incarnation=1))

    assert rules_run == {"config": 2, "id": 2}
    assert [r.worker_id for r in await scheduler.workers()] == ["w-1"]


async def test_a_batch_runs_the_rules_on_a_shared_config_once_per_side_and_on_each_id_once_per_side(
    scheduler: EmbeddedScheduler, tokens: bool, rules_run: Counter[str]
) -> None:
    adapter = WorkerRegistrationAdapter(scheduler.client(credential=token(tokens)))
    config = new_config()
    workers = [DynamicWorker(f"w-{i}", WorkerType.DOCKER, config) for i in range(5)]

    results = await adapter.register_workers_batch(workers)

    assert [r.ok for r in results] == [True] * 5
    assert rules_run == {"config": 2, "id": 10}


async def test_an_agents_hello_runs_the_rules_once_on_the_scheduler(
    scheduler: EmbeddedScheduler, tokens: bool, rules_run: Counter[str]
) -> None:
    config = AgentConfig(
        schedulers=(scheduler.target,),
        worker_id="agent-1",
        cpu_cores=2,
        memory_mb=1024,
        token=token(tokens, "agent-1"),
    )
    agent = WorkerAgent(config)
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 5)
        # The agent sends its hello unchecked (its settings were checked when it started).
        assert rules_run == {"config": 1, "id": 1}
    finally:
        agent.request_shutdown()
        await asyncio.wait_for(running, 10)


async def test_invalid_data_sent_anyway_is_refused_by_the_scheduler_which_ran_the_rules_once(
    scheduler: EmbeddedScheduler, tokens: bool, rules_run: Counter[str]
) -> None:
    client = scheduler.client(credential=token(tokens, "w-1"))
    adapter = WorkerRegistrationAdapter(client, RegistrationConfig(validate_before_send=False, max_retries=0))

    with pytest.raises(RegistrationFailed) as refused:
        await adapter.register_worker(DynamicWorker("w-1", WorkerType.DOCKER, new_config(cpu_cores=0)))

    assert refused.value.cause.code is ErrorCode.INVALID_ARGUMENT
    assert refused.value.violations == (
        FieldViolation("capabilities.cpu_cores", "must be between 1 and 4096, got 0"),
    )
    assert rules_run == {"config": 1, "id": 1}
    assert await scheduler.workers() == []
