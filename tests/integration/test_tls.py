"""TLS and mutual TLS on a real grpc.aio server (the health service) and on an HTTPS socket, from PEM files."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hodei.security import (
    TestPki,
    TlsConfig,
    channel_credentials,
    issue_certificate,
    make_ca,
    server_credentials,
    ssl_context_for_http,
    write_test_pki,
)

DEADLINE = 5.0  # seconds; generous: a refusal comes within milliseconds on loopback
# Each channel makes its own connection: a refused handshake on one never leaks into another's answer.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return write_test_pki(tmp_path / "pki")


@pytest.fixture
def other_pki(tmp_path: Path) -> TestPki:
    """A second, unrelated CA with its own server and client certificates."""
    return write_test_pki(tmp_path / "other")


@asynccontextmanager
async def health_server(credentials: Any) -> AsyncIterator[str]:
    """A grpc.aio server on a free loopback port answering health checks; yields its target."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def tls_server(pki: TestPki) -> Any:
    return server_credentials(pki.server_cert_file, pki.server_key_file)


def mtls_server(pki: TestPki) -> Any:
    return server_credentials(pki.server_cert_file, pki.server_key_file, client_ca_file=pki.ca_file)


async def check_health(target: str, credentials: Any | None) -> int:
    """The server's health status, over TLS with ``credentials`` (None: plaintext); raises AioRpcError."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE)
        return int(response.status)


async def refused_with(target: str, credentials: Any | None) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await check_health(target, credentials)
    code: grpc.StatusCode = raised.value.code()
    return code


# --- gRPC ----------------------------------------------------------------------------------------------------


async def test_tls_server_serves_a_client_after_refusing_another(pki: TestPki, other_pki: TestPki) -> None:
    async with health_server(tls_server(pki)) as target:
        code = await refused_with(target, channel_credentials(other_pki.ca_file))
        status = await check_health(target, channel_credentials(pki.ca_file))

    assert (code, status) == (grpc.StatusCode.UNAVAILABLE, health_pb2.HealthCheckResponse.SERVING)


# (the server's credentials, the client's) from one PKI
TRUSTED: dict[str, tuple[Callable[[TestPki], Any], Callable[[TestPki], Any]]] = {
    "tls-client-trusting-the-ca": (tls_server, lambda pki: channel_credentials(pki.ca_file)),
    "mtls-client-with-a-certificate-from-the-ca": (
        mtls_server,
        lambda pki: channel_credentials(
            pki.ca_file, cert_file=pki.client_cert_file, key_file=pki.client_key_file
        ),
    ),
}


@pytest.mark.parametrize("client", list(TRUSTED))
async def test_a_client_and_a_server_that_trust_each_other_get_an_answer(client: str, pki: TestPki) -> None:
    server, credentials = TRUSTED[client]

    async with health_server(server(pki)) as target:
        status = await check_health(target, credentials(pki))

    assert status == health_pb2.HealthCheckResponse.SERVING


# (the server's credentials, the client's: from the server's PKI and another one)
UNTRUSTED: dict[str, tuple[Callable[[TestPki], Any], Callable[[TestPki, TestPki], Any]]] = {
    "tls-client-trusting-another-ca": (tls_server, lambda pki, other: channel_credentials(other.ca_file)),
    "plaintext-client-of-a-tls-server": (tls_server, lambda pki, other: None),
    "mtls-client-without-a-certificate": (mtls_server, lambda pki, other: channel_credentials(pki.ca_file)),
    "mtls-client-with-a-certificate-from-another-ca": (
        mtls_server,
        lambda pki, other: channel_credentials(
            pki.ca_file, cert_file=other.client_cert_file, key_file=other.client_key_file
        ),
    ),
}


@pytest.mark.parametrize("client", list(UNTRUSTED))
async def test_a_client_the_server_cannot_trust_or_that_cannot_trust_it_is_refused_unavailable(
    client: str, pki: TestPki, other_pki: TestPki
) -> None:
    server, credentials = UNTRUSTED[client]

    async with health_server(server(pki)) as target:
        code = await refused_with(target, credentials(pki, other_pki))

    assert code is grpc.StatusCode.UNAVAILABLE


async def test_tls_config_builds_the_same_mtls_server(pki: TestPki) -> None:
    config = TlsConfig(pki.server_cert_file, pki.server_key_file, pki.ca_file)
    with_cert = channel_credentials(pki.ca_file, cert_file=pki.client_cert_file, key_file=pki.client_key_file)

    async with health_server(config.server_credentials()) as target:
        status = await check_health(target, with_cert)
        code = await refused_with(target, channel_credentials(pki.ca_file))

    assert (status, code) == (health_pb2.HealthCheckResponse.SERVING, grpc.StatusCode.UNAVAILABLE)


def test_a_client_certificate_needs_both_its_files(pki: TestPki) -> None:
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        channel_credentials(pki.ca_file, cert_file=pki.client_cert_file)
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        channel_credentials(pki.ca_file, key_file=pki.client_key_file)


def test_builders_name_the_file_that_is_wrong(pki: TestPki, other_pki: TestPki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=f"{missing} does not exist"):
        server_credentials(missing, pki.server_key_file)
    with pytest.raises(ValueError, match=f"{pki.server_key_file} holds no PEM certificate"):
        server_credentials(pki.server_key_file, pki.server_key_file)
    with pytest.raises(ValueError, match=f"{pki.server_cert_file} holds no PEM private key"):
        channel_credentials(pki.ca_file, cert_file=pki.client_cert_file, key_file=pki.server_cert_file)
    with pytest.raises(
        ValueError, match=f"{other_pki.server_key_file} is not the private key of the certificate"
    ):
        ssl_context_for_http(pki.server_cert_file, other_pki.server_key_file)
    with pytest.raises(ValueError, match=f"{tmp_path} is a directory"):
        server_credentials(pki.server_cert_file, pki.server_key_file, client_ca_file=tmp_path)


# --- TlsConfig -----------------------------------------------------------------------------------------------


def test_tls_config_of_good_files_has_no_violations(pki: TestPki) -> None:
    config = TlsConfig(str(pki.server_cert_file), str(pki.server_key_file), str(pki.ca_file))  # type: ignore[arg-type]

    assert config.violations() == []
    config.check()
    assert config.cert_file == pki.server_cert_file  # paths given as text become Path


def test_tls_config_names_every_file_that_is_missing_or_not_pem(pki: TestPki, tmp_path: Path) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello")
    config = TlsConfig(tmp_path / "nope.pem", not_pem, tmp_path / "ca-nope.pem")

    violations = {v.field: v.description for v in config.violations()}

    assert violations == {
        "cert_file": f"{tmp_path / 'nope.pem'} does not exist",
        "key_file": f"{not_pem} holds no PEM private key that can be read without a password",
        "ca_file": f"{tmp_path / 'ca-nope.pem'} does not exist",
    }
    with pytest.raises(
        ValueError, match=r"^invalid TlsConfig: cert_file: .*nope\.pem does not exist; key_file: "
    ):
        config.check()


def test_tls_config_finds_a_key_that_is_not_the_certificates(pki: TestPki, other_pki: TestPki) -> None:
    config = TlsConfig(pki.server_cert_file, other_pki.server_key_file)

    [violation] = config.violations()

    assert violation.field == "key_file"
    assert str(other_pki.server_key_file) in violation.description
    assert str(pki.server_cert_file) in violation.description


# --- the test PKI --------------------------------------------------------------------------------------------


def test_test_pki_writes_keys_readable_by_their_owner_only(pki: TestPki) -> None:
    modes = {
        path.name: stat.S_IMODE(path.stat().st_mode)
        for path in (
            pki.ca_file,
            pki.server_cert_file,
            pki.server_key_file,
            pki.client_cert_file,
            pki.client_key_file,
        )
    }

    assert modes == {
        "ca.pem": 0o644,
        "server.pem": 0o644,
        "server-key.pem": 0o600,
        "client.pem": 0o644,
        "client-key.pem": 0o600,
    }


def test_rewriting_a_test_pki_replaces_it_and_keeps_keys_private(tmp_path: Path) -> None:
    first = write_test_pki(tmp_path)
    first_ca = first.ca_file.read_bytes()
    first.server_key_file.chmod(0o666)

    second = write_test_pki(tmp_path)

    assert second == first  # the same paths
    assert second.ca_file.read_bytes() != first_ca  # a fresh CA
    assert stat.S_IMODE(second.server_key_file.stat().st_mode) == 0o600


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_test_pki_certificates_carry_the_extensions_tls_checks(pki: TestPki) -> None:
    ca, server, client = load(pki.ca_file), load(pki.server_cert_file), load(pki.client_cert_file)

    ca_constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_constraints.critical and ca_constraints.value.ca and ca_constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for leaf, usage in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (client, ExtendedKeyUsageOID.CLIENT_AUTH)):
        assert leaf.issuer == ca.subject
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        leaf.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_issued_certificate_may_serve_both_ends_and_never_outlives_its_ca() -> None:
    ca = make_ca("short-lived CA", valid_for=timedelta(hours=1))
    both = x509.load_pem_x509_certificate(
        issue_certificate(ca, "peer", client=True, server=True, valid_for=timedelta(days=365)).cert_pem
    )
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)

    assert list(both.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert both.not_valid_after_utc == ca_cert.not_valid_after_utc
    with pytest.raises(ValueError, match="a server, a client, or both"):
        issue_certificate(ca, "nobody", client=False, server=False)
    ed25519_key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="the CA key must be an EC key"):
        issue_certificate((ca.cert_pem, ed25519_key), "peer")


# --- HTTPS (/metrics) ----------------------------------------------------------------------------------------

RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"


class HttpsServer:
    """A TLS socket on a free loopback port that greets every client it lets in with ``ok``, and counts them.

    It speaks first, so that a client it refuses has sent nothing: the refusal is then a clean end of stream
    for that client, never a reset that depends on timing.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.answered = 0
        self.port = 0

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.answered += 1
        writer.write(RESPONSE)
        await writer.drain()
        writer.close()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[HttpsServer]:
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0, ssl=self.context)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()

    async def fetch(self, context: ssl.SSLContext) -> bytes:
        """All the client reads before the server closes the connection."""
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=context, server_hostname="localhost"
            )
            try:
                return await reader.read()
            finally:
                writer.close()


def client_context(pki: TestPki, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca_file)
    if with_certificate:
        context.load_cert_chain(pki.client_cert_file, pki.client_key_file)
    return context


async def test_https_context_serves_a_client_trusting_the_ca(pki: TestPki) -> None:
    context = ssl_context_for_http(pki.server_cert_file, pki.server_key_file)

    async with HttpsServer(context).serving() as server:
        assert await server.fetch(client_context(pki, with_certificate=False)) == RESPONSE


async def test_https_client_trusting_another_ca_is_refused(pki: TestPki, other_pki: TestPki) -> None:
    context = ssl_context_for_http(pki.server_cert_file, pki.server_key_file)

    async with HttpsServer(context).serving() as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
            await server.fetch(client_context(other_pki, with_certificate=False))

    assert server.answered == 0


async def test_https_with_client_ca_lets_in_only_clients_with_a_certificate_from_it(
    pki: TestPki, other_pki: TestPki
) -> None:
    context = TlsConfig(pki.server_cert_file, pki.server_key_file, pki.ca_file).ssl_context_for_http()
    other_ca_client = client_context(pki, with_certificate=False)
    other_ca_client.load_cert_chain(other_pki.client_cert_file, other_pki.client_key_file)

    async with HttpsServer(context).serving() as server:
        with_certificate = await server.fetch(client_context(pki, with_certificate=True))
        without_certificate = await server.fetch(client_context(pki, with_certificate=False))
        with_another_cas_certificate = await server.fetch(other_ca_client)

    assert (with_certificate, without_certificate, with_another_cas_certificate) == (RESPONSE, b"", b"")
    assert server.answered == 1
