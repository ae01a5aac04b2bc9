"""The whole path with auth and mutual TLS: the control plane mints a join token per worker, the provider hands
it to the agent, the agent registers with it, keeps the credential it gets back, reconnects and unregisters
with it; and an agent whose token is refused stops at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from hodei import DynamicWorkerConfig, WorkerType
from hodei._bootstrap import build_control_plane
from hodei.agent import AgentConfig, AgentRefused, WorkerAgent
from hodei.domain import utcnow
from hodei.errors import ErrorCode
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand
from hodei.management import WorkerManagementConfig
from hodei.providers import ProcessProvider
from hodei.security import (
    AccessPolicy,
    ClientTlsConfig,
    JoinTokens,
    SchedulerSecurity,
    TestPki,
    TlsConfig,
    TokenAuthority,
    write_test_pki,
)
from hodei.security._provisioning import JOIN_TOKEN_VARIABLE
from hodei.testing import EmbeddedScheduler
from tests.helpers import connected, wait_for

SECRET = b"p" * 48
LIVENESS = LivenessConfig(heartbeat_interval=0.2, lease_ttl=2.0, lost_grace=5.0, recovery_window=0.0)
CONFIG = DynamicWorkerConfig(
    worker_type=WorkerType.PROCESS, cpu_cores=1, memory_mb=256, labels={"suite": "secure"}, pool="builders"
)


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority(SECRET)


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return write_test_pki(tmp_path / "pki")


@pytest.fixture
def client_tls(pki: TestPki) -> ClientTlsConfig:
    return ClientTlsConfig(pki.ca_file, pki.client_cert_file, pki.client_key_file)


@pytest_asyncio.fixture
async def scheduler(authority: TokenAuthority, pki: TestPki) -> AsyncIterator[EmbeddedScheduler]:
    security = SchedulerSecurity(
        access=AccessPolicy(authority),
        tls=TlsConfig(pki.server_cert_file, pki.server_key_file, pki.ca_file),
    )
    async with EmbeddedScheduler(security=security, liveness=LIVENESS) as embedded:
        yield embedded


async def test_provision_register_available_decommission_with_join_tokens_and_mutual_tls(
    scheduler: EmbeddedScheduler,
    authority: TokenAuthority,
    client_tls: ClientTlsConfig,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei")
    provider = ProcessProvider(
        scheduler.target,
        log_dir=tmp_path / "agents",
        stop_grace=5.0,
        join_tokens=JoinTokens(authority, ttl=60),
        tls=client_tls,
    )
    service = build_control_plane(
        provider,
        scheduler=scheduler.target,
        credential=authority.mint_operator_token("control-plane"),
        tls=client_tls,
        management=WorkerManagementConfig(drain_timeout=5.0, stop_grace=5.0),
    )
    try:
        worker = await service.provision_worker(CONFIG)
        await wait_for(lambda: connected(scheduler, worker.worker_id), timeout=20)
        pid = provider.pid(worker.worker_id)
        assert pid is not None
        process = psutil.Process(pid)
        command_line, environment = " ".join(process.cmdline()), process.environ()
        record = await scheduler.get_worker(worker.worker_id)

        outcome = await service.decommission_worker(worker.worker_id)
        left = await scheduler.workers()
        gone = not process.is_running()
    finally:
        await provider.aclose()
        await service.aclose()

    assert record is not None
    assert (record.pool, dict(record.labels), record.incarnation > 0) == (
        "builders",
        {"suite": "secure", "hodei.owner": "hodei"},
        True,
    )
    token = environment[JOIN_TOKEN_VARIABLE]
    assert authority.identify(token).worker_id == worker.worker_id  # type: ignore[union-attr]
    assert token not in command_line  # other users of the machine read command lines, not environments
    assert "--tls-cert" in command_line
    assert outcome.was_registered and outcome.drained
    assert left == []
    assert gone
    refusals = [r for r in caplog.records if r.getMessage() == "auth.refused"]
    assert refusals == []


def agent_config(
    scheduler: EmbeddedScheduler, token: str | None, tls: ClientTlsConfig, **options: object
) -> AgentConfig:
    return AgentConfig(
        schedulers=(scheduler.target,),
        worker_id="w-1",
        cpu_cores=1,
        memory_mb=256,
        token=token,
        tls=tls,
        reconnect_base=0.01,
        reconnect_max=0.05,
        **options,  # type: ignore[arg-type]
    )


async def test_an_agent_keeps_the_credential_it_was_handed_and_reconnects_and_unregisters_with_it(
    scheduler: EmbeddedScheduler, authority: TokenAuthority, client_tls: ClientTlsConfig
) -> None:
    token = authority.mint_join_token("w-1", ttl=60)
    agent = WorkerAgent(agent_config(scheduler, token, client_tls))
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 10)
        first_incarnation = agent.incarnation
        # The scheduler asks for a fresh registration: the join token is spent, so only the credential works.
        scheduler.scheduler.sessions["w-1"].push(WorkerCommand(CommandKind.REREGISTER, "test"))
        await wait_for(lambda: connected_again(scheduler, first_incarnation), timeout=10)
        agent.request_shutdown("test over")
        await asyncio.wait_for(running, 10)
    finally:
        running.cancel()

    assert authority.verify_worker_credential(agent.credential, worker_id="w-1").worker_id == "w-1"
    assert agent.connections == 2
    assert agent.unregistered
    assert await scheduler.workers() == []
    assert token not in repr(agent.config)


async def connected_again(scheduler: EmbeddedScheduler, after: int) -> bool:
    record = await scheduler.get_worker("w-1")
    return record is not None and record.connected and record.incarnation > after


@pytest.mark.parametrize(
    ("case", "code"),
    [("expired", ErrorCode.UNAUTHENTICATED), ("another worker's", ErrorCode.PERMISSION_DENIED)],
)
async def test_an_agent_whose_token_is_refused_stops_at_once_without_retrying(
    scheduler: EmbeddedScheduler,
    authority: TokenAuthority,
    client_tls: ClientTlsConfig,
    case: str,
    code: ErrorCode,
) -> None:
    past = TokenAuthority(SECRET, clock=lambda: utcnow() - timedelta(hours=1))
    token = (
        past.mint_join_token("w-1", ttl=60) if case == "expired" else authority.mint_join_token("w-2", ttl=60)
    )
    agent = WorkerAgent(agent_config(scheduler, token, client_tls))

    with pytest.raises(AgentRefused) as raised:
        await asyncio.wait_for(agent.run(), 10)

    assert raised.value.cause.code is code
    assert agent.connections == 0
    assert token not in str(raised.value)
    assert await scheduler.workers() == []


async def test_an_agent_without_the_client_certificate_cannot_reach_a_mutual_tls_scheduler(
    scheduler: EmbeddedScheduler, authority: TokenAuthority, pki: TestPki
) -> None:
    token = authority.mint_join_token("w-1", ttl=60)
    agent = WorkerAgent(agent_config(scheduler, token, ClientTlsConfig(pki.ca_file)))
    running = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: stream_failures(agent), timeout=10)
    finally:
        agent.request_shutdown("test over")
        await asyncio.wait_for(running, 10)

    assert agent.connections == 0
    assert await scheduler.workers() == []


async def stream_failures(agent: WorkerAgent) -> bool:
    failed = agent.metrics.registry.get_sample_value(
        "hodei_agent_stream_connects_total", {"result": "unavailable"}
    )
    return failed is not None and failed >= 2


def test_join_tokens_bind_the_pool_and_labels_of_the_worker_and_name_no_secret(
    authority: TokenAuthority,
) -> None:
    tokens = JoinTokens(authority, ttl=30)

    token = tokens("w-1", CONFIG)
    [(variable, value)] = tokens.environment("w-2", CONFIG).items()
    loose = JoinTokens(authority, bind_pool=False, bind_labels=False)("w-3", CONFIG)

    claims = authority.verify_join_token(token, worker_id="w-1", pool="builders", labels={"suite": "secure"})
    assert (claims.expires_at - claims.issued_at).total_seconds() == 30
    assert variable == JOIN_TOKEN_VARIABLE
    assert (
        authority.verify_join_token(
            value, worker_id="w-2", pool="builders", labels={"suite": "secure"}
        ).worker_id
        == "w-2"
    )
    assert authority.verify_join_token(loose, worker_id="w-3", pool="elsewhere", labels={}).pool is None
    assert repr(tokens) == "JoinTokens(ttl=30, bind_pool=True, bind_labels=True)"
