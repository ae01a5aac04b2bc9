"""Why an agent cannot reach its scheduler: a TLS mismatch is asked of the port itself, unless the agent has had a
stream with that address before (with the same settings TLS cannot be what fails there), so that a fleet on its
way back from a scheduler restart does not send it one TLS handshake per agent."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hodei.agent._config import AgentConfig
from hodei.agent._reconnect import Reconnection
from hodei.errors import ErrorCode, scheduler_error_for
from hodei.security import SchedulerSecurity, TlsConfig, write_test_pki
from hodei.testing import EmbeddedScheduler
from hodei.transport._diagnosis import unreachable_reason

LOG = logging.getLogger("tests.unreachable")
CLOSED = scheduler_error_for(ErrorCode.UNAVAILABLE, "Socket closed")


@pytest.fixture
async def tls_scheduler(tmp_path: Path) -> AsyncIterator[str]:
    """The address of a scheduler that speaks TLS only."""
    pki = write_test_pki(tmp_path / "pki")
    security = SchedulerSecurity(tls=TlsConfig(pki.server_cert_file, pki.server_key_file))
    async with EmbeddedScheduler(security=security) as scheduler:
        yield scheduler.target


def _tls_hint(target: str) -> str:
    return f"the scheduler at {target} speaks TLS: give --tls-ca (the CA that signed its certificate)"


async def test_a_plaintext_client_is_told_that_the_port_speaks_tls(tls_scheduler: str) -> None:
    said = unreachable_reason(tls_scheduler, "Socket closed", tls=False, client_cert=False)

    assert said == _tls_hint(tls_scheduler)


async def test_without_the_probe_the_reason_is_what_grpc_said(tls_scheduler: str) -> None:
    said = unreachable_reason(tls_scheduler, "Socket closed", tls=False, client_cert=False, probe_tls=False)

    assert said == f"the scheduler at {tls_scheduler} cannot be reached: Socket closed"


def _reconnection(target: str) -> Reconnection:
    """An agent's reconnections with ``target``, its log lines told to LOG."""
    config = AgentConfig(schedulers=(target,), worker_id="agent-1", cpu_cores=1, memory_mb=64)
    return Reconnection(config, random.Random(7).random, LOG)


def _reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.__dict__["reason"]
        for record in caplog.records
        if record.getMessage() == "agent.cannot_connect"
    ]


async def test_an_agent_probes_an_address_it_never_had_a_stream_with(
    tls_scheduler: str, caplog: pytest.LogCaptureFixture
) -> None:
    reconnection = _reconnection(tls_scheduler)

    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        advised = await reconnection.failed(CLOSED, tls_scheduler, was_up=False, ever_connected=False)

    assert advised is None
    assert _reasons(caplog) == [_tls_hint(tls_scheduler)]


async def test_an_agent_does_not_probe_an_address_whose_stream_was_up(
    tls_scheduler: str, caplog: pytest.LogCaptureFixture
) -> None:
    reconnection = _reconnection(tls_scheduler)

    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        await reconnection.failed(CLOSED, tls_scheduler, was_up=True, ever_connected=True)
        await reconnection.failed(CLOSED, tls_scheduler, was_up=False, ever_connected=True)

    assert _reasons(caplog) == [f"the scheduler at {tls_scheduler} cannot be reached: Socket closed"]
    assert reconnection.failures == 2
