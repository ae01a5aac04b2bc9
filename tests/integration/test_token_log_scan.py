"""No token appears in any log line or span of a whole secure scenario, refusals included.

Every log record of this process (hodei's and everyone else's, at DEBUG, as JSON) and every span is searched for
each token the scenario made or received, whole and for its signature alone.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hodei import ErrorCode, RegistrationConfig, WorkerRegistrationAdapter
from hodei.agent import AgentConfig, WorkerAgent
from hodei.domain import utcnow
from hodei.errors import SchedulerError
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand
from hodei.security import (
    AccessPolicy,
    ClientTlsConfig,
    SchedulerSecurity,
    TlsConfig,
    TokenAuthority,
    write_test_pki,
)
from hodei.testing import EmbeddedScheduler
from tests.helpers import make_worker, wait_for

SECRET = b"s" * 48
LIVENESS = LivenessConfig(heartbeat_interval=0.1, lease_ttl=2.0, recovery_window=0.0)


async def test_no_token_appears_in_any_log_line_or_span_of_a_whole_secure_scenario(
    captured_logs: io.StringIO, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    pki = write_test_pki(tmp_path / "pki")
    tls = ClientTlsConfig(pki.ca_file)
    authority = TokenAuthority(SECRET)
    tokens: list[str] = []

    def made(token: str) -> str:
        tokens.append(token)
        return token

    security = SchedulerSecurity(
        access=AccessPolicy(authority), tls=TlsConfig(pki.server_cert_file, pki.server_key_file)
    )
    async with EmbeddedScheduler(security=security, liveness=LIVENESS) as scheduler:
        # The control plane registers workers, one and a batch, and looks at them.
        control = scheduler.client(credential=made(authority.mint_operator_token("control-plane")), tls=tls)
        adapter = WorkerRegistrationAdapter(control, RegistrationConfig(max_retries=1, base_backoff=0.001))
        await adapter.register_worker(make_worker("push-1"))
        await adapter.register_workers_batch([make_worker(f"batch-{i}") for i in range(3)])

        # A worker registers itself with a join token and gets its credential.
        self_registered = await scheduler.client(
            credential=made(authority.mint_join_token("self-1", ttl=60)), tls=tls
        ).register_worker(make_worker("self-1"))
        made(self_registered.credential)

        # An agent joins, is asked to register again (it reconnects with its credential), drains, leaves.
        agent = WorkerAgent(
            AgentConfig(
                schedulers=(scheduler.target,),
                worker_id="agent-1",
                cpu_cores=1,
                memory_mb=256,
                token=made(authority.mint_join_token("agent-1", ttl=60)),
                tls=tls,
                reconnect_base=0.01,
                reconnect_max=0.05,
            )
        )
        running = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.connected.wait(), 10)
        made(agent.credential)
        scheduler.scheduler.sessions["agent-1"].push(WorkerCommand(CommandKind.REREGISTER, "test"))
        await wait_for(lambda: reconnected(agent), timeout=10)
        await control.drain_worker("agent-1", reason="scan")
        agent.request_shutdown("scenario over")
        await asyncio.wait_for(running, 10)

        # Every refusal (none, garbage, expired, forged, another worker's, replayed, not allowed), each tried twice,
        # beside a worker's credential that is good for its own worker.
        expired = TokenAuthority(SECRET, clock=lambda: utcnow() - timedelta(hours=1))
        attempts = [
            ("no-token", None),
            ("garbage", made("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.Zm9yZ2VkLXNpZ25hdHVyZQ")),
            ("expired", made(expired.mint_join_token("expired", ttl=60))),
            ("forged", made(TokenAuthority(b"x" * 48).mint_join_token("forged", ttl=60))),
            ("wrong", made(authority.mint_join_token("someone-else", ttl=60))),
            ("self-1", self_registered.credential),
            ("replayed", made(authority.mint_join_token("replayed", ttl=60))),
        ]
        outcomes = []
        for worker_id, token in attempts:
            client = scheduler.client(credential=token, tls=tls)
            for incarnation in (1, 2):  # the second a new registration: a replay for a single-use token
                try:
                    await client.register_worker(replace(make_worker(worker_id), incarnation=incarnation))
                    outcomes.append("OK")
                except SchedulerError as error:
                    outcomes.append(error.code.name)
        denied = scheduler.client(credential=self_registered.credential, tls=tls)
        for call in (denied.unregister_worker("push-1"), denied.list_workers()):
            try:
                await call
            except SchedulerError as error:
                outcomes.append(error.code.name)
        failed = await WorkerRegistrationAdapter(
            scheduler.client(credential=tokens[-1], tls=tls), RegistrationConfig(max_retries=2)
        ).register_workers_batch([make_worker("batch-x")])

    logs = captured_logs.getvalue()
    traced = json.dumps([json.loads(span.to_json()) for span in spans.get_finished_spans()])
    events = [json.loads(line)["event"] for line in logs.splitlines()]

    # The scenario did what it says, so that the scan had something to search.
    assert outcomes == [
        *["UNAUTHENTICATED"] * 8,
        *["PERMISSION_DENIED"] * 2,
        "OK",
        "OK",
        "OK",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "PERMISSION_DENIED",
    ]
    assert failed[0].error is not None
    assert (failed[0].error.code, failed[0].attempts) == (ErrorCode.PERMISSION_DENIED, 1)
    assert events.count("auth.refused") == 14
    assert {
        "agent.connected",
        "agent.unregistered",
        "registration.batch_finished",
        "worker.registered",
    } <= set(events)
    assert len(spans.get_finished_spans()) > 20
    assert len(tokens) == 10
    for token in tokens:
        signature = token.rsplit(".", 1)[1]
        assert token not in logs
        assert signature not in logs
        assert token not in traced
        assert signature not in traced


async def reconnected(agent: WorkerAgent) -> bool:
    return agent.connections == 2 and agent.connected.is_set()
