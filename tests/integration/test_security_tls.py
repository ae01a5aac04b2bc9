"""The scheduler's gRPC port over TLS and mutual TLS, and what it says at start when it is exposed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from hodei import SchedulerPortClient
from hodei.errors import SchedulerUnavailable
from hodei.security import (
    AccessPolicy,
    ClientTlsConfig,
    SchedulerSecurity,
    TestPki,
    TlsConfig,
    TokenAuthority,
    write_test_pki,
)
from hodei.server._server import is_loopback
from hodei.testing import EmbeddedScheduler
from tests.helpers import make_worker

SECRET = b"t" * 48


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return write_test_pki(tmp_path / "pki")


@pytest.fixture
def other_pki(tmp_path: Path) -> TestPki:
    return write_test_pki(tmp_path / "other")


def tls_security(pki: TestPki, *, mutual: bool = False, auth: bool = False) -> SchedulerSecurity:
    return SchedulerSecurity(
        access=AccessPolicy(TokenAuthority(SECRET)) if auth else None,
        tls=TlsConfig(pki.server_cert_file, pki.server_key_file, pki.ca_file if mutual else None),
    )


# Each client dials a connection of its own: a refused handshake never leaks into another client's answer.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


async def register(target: str, tls: ClientTlsConfig | None, credential: str | None = None) -> str:
    async with SchedulerPortClient(target, tls=tls, credential=credential, options=OWN_CONNECTION) as client:
        receipt = await client.register_worker(make_worker("w-1"), timeout=5)
    return receipt.record.worker_id


async def test_a_client_trusting_the_scheduler_s_ca_registers_over_tls(pki: TestPki) -> None:
    async with EmbeddedScheduler(security=tls_security(pki)) as scheduler:
        registered = await register(scheduler.target, ClientTlsConfig(pki.ca_file))

    assert registered == "w-1"


# Whether the scheduler asks for a client certificate, and the client's TLS: from the scheduler's PKI and another.
UNTRUSTED: dict[str, tuple[bool, Callable[[TestPki, TestPki], ClientTlsConfig | None]]] = {
    "trusting-another-ca": (False, lambda pki, other: ClientTlsConfig(other.ca_file)),
    "plaintext": (False, lambda pki, other: None),
    "mutual-tls-without-a-certificate": (True, lambda pki, other: ClientTlsConfig(pki.ca_file)),
    "mutual-tls-with-a-certificate-from-another-ca": (
        True,
        lambda pki, other: ClientTlsConfig(pki.ca_file, other.client_cert_file, other.client_key_file),
    ),
}


@pytest.mark.parametrize("client", list(UNTRUSTED))
async def test_a_client_that_does_not_trust_the_scheduler_or_is_not_trusted_is_refused_and_nothing_registers(
    pki: TestPki, other_pki: TestPki, client: str
) -> None:
    mutual, tls = UNTRUSTED[client]
    async with EmbeddedScheduler(security=tls_security(pki, mutual=mutual)) as scheduler:
        with pytest.raises(SchedulerUnavailable):
            await register(scheduler.target, tls(pki, other_pki))
        workers = await scheduler.workers()

    assert workers == []


async def test_mutual_tls_and_a_token_register_a_worker(pki: TestPki) -> None:
    tls = ClientTlsConfig(pki.ca_file, pki.client_cert_file, pki.client_key_file)
    operator = TokenAuthority(SECRET).mint_operator_token("ops")
    async with EmbeddedScheduler(security=tls_security(pki, mutual=True, auth=True)) as scheduler:
        registered = await register(scheduler.target, tls, operator)
        client = scheduler.client(credential=operator, tls=tls)
        listed = await client.list_workers(timeout=5)

    assert registered == "w-1"
    assert [w.worker_id for w in listed.workers] == ["w-1"]


def test_a_client_tls_config_with_a_certificate_but_no_key_is_refused(pki: TestPki) -> None:
    config = ClientTlsConfig(pki.ca_file, cert_file=pki.client_cert_file)

    assert [v.field for v in config.violations()] == ["key_file"]
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        config.check()


def test_a_client_tls_config_names_a_ca_file_that_is_not_pem(tmp_path: Path, pki: TestPki) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")

    assert [v.field for v in ClientTlsConfig(bogus).violations()] == ["ca_file"]
    assert ClientTlsConfig(pki.ca_file).violations() == []
    assert ClientTlsConfig().violations() == []
    assert ClientTlsConfig(pki.ca_file, pki.client_cert_file, pki.client_key_file).violations() == []


async def test_tls_is_for_a_client_that_makes_its_own_channel(pki: TestPki) -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(ValueError, match="was given a channel"):
            SchedulerPortClient(channel, tls=ClientTlsConfig(pki.ca_file))


def test_scheduler_security_from_files_refuses_half_a_tls_configuration(pki: TestPki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both a certificate and its key"):
        SchedulerSecurity.from_files(tls_cert=pki.server_cert_file)
    with pytest.raises(ValueError, match="needs the server's TLS certificate"):
        SchedulerSecurity.from_files(tls_client_ca=pki.ca_file)
    with pytest.raises(ValueError, match=r"server-key\.pem is not the private key"):
        SchedulerSecurity.from_files(tls_cert=pki.client_cert_file, tls_key=pki.server_key_file)


def test_scheduler_security_from_files_reads_the_key_and_the_certificates(
    pki: TestPki, tmp_path: Path
) -> None:
    key = tmp_path / "token.key"
    key.write_bytes(SECRET)

    security = SchedulerSecurity.from_files(
        auth_key=key,
        tls_cert=pki.server_cert_file,
        tls_key=pki.server_key_file,
        tls_client_ca=pki.ca_file,
        worker_credential_ttl=60,
    )

    assert security.auth
    assert security.access is not None and security.access.worker_credential_ttl == 60
    assert security.tls == TlsConfig(pki.server_cert_file, pki.server_key_file, pki.ca_file)
    assert not SchedulerSecurity().auth


# --- a loud warning when exposed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.8.9.10:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("10.1.2.3:1", False),
        ("scheduler.example:1", False),
    ],
)
def test_is_loopback_knows_which_addresses_only_this_machine_reaches(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("hodei")
    ]


async def test_auth_off_on_every_interface_is_a_loud_warning_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei")
    async with EmbeddedScheduler(host="0.0.0.0"):
        pass

    assert warnings_of(caplog) == ["scheduler.auth_off"]
    [record] = [r for r in caplog.records if r.getMessage() == "scheduler.auth_off"]
    assert "anyone who can reach it" in record.reason  # type: ignore[attr-defined]


async def test_auth_on_in_plaintext_on_every_interface_is_a_warning_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei")
    async with EmbeddedScheduler(
        host="0.0.0.0", security=SchedulerSecurity(access=AccessPolicy(TokenAuthority(SECRET)))
    ):
        pass

    assert warnings_of(caplog) == ["scheduler.plaintext"]


async def test_auth_and_tls_on_every_interface_start_quietly(
    caplog: pytest.LogCaptureFixture, pki: TestPki
) -> None:
    caplog.set_level(logging.INFO, logger="hodei")
    async with EmbeddedScheduler(host="0.0.0.0", security=tls_security(pki, auth=True)):
        pass

    started = [r for r in caplog.records if r.getMessage() == "scheduler.started"]
    assert [(r.access_control, r.tls) for r in started] == [("on", "on")]  # type: ignore[attr-defined]
    assert warnings_of(caplog) == []


async def test_auth_off_on_loopback_starts_quietly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hodei")
    async with EmbeddedScheduler():
        pass

    started = [r for r in caplog.records if r.getMessage() == "scheduler.started"]
    assert warnings_of(caplog) == []
    assert [(r.access_control, r.tls) for r in started] == [("off", "off")]  # type: ignore[attr-defined]
