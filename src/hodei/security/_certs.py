"""A throw-away certificate authority for local use and tests: EC P-256 keys, PEM, no passwords.

``write_test_pki(directory)`` writes a CA, a server certificate for ``localhost``/``127.0.0.1``/``::1`` and a
client certificate, ready for :mod:`hodei.security._tls`. :func:`make_ca` and :func:`issue_certificate` make
more. Nothing here is meant for production: the CA's key is kept in memory only, and thrown away.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_VALIDITY", "PemPair", "TestPki", "issue_certificate", "make_ca", "write_test_pki"]

DEFAULT_VALIDITY = timedelta(days=30)
_BACKDATE = timedelta(minutes=5)  # so that a peer whose clock is a little behind accepts a fresh certificate


class PemPair(NamedTuple):
    """A certificate and its private key, both PEM (the key PKCS#8, unencrypted)."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True, slots=True)
class TestPki:
    """The files :func:`write_test_pki` wrote."""

    __test__ = False  # not a pytest test class, despite its name

    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path


def make_ca(common_name: str = "hodei throw-away CA", *, valid_for: timedelta = DEFAULT_VALIDITY) -> PemPair:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        _builder(name, name, key.public_key(), now - _BACKDATE, now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return PemPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_certificate(
    ca: PemPair | tuple[bytes, bytes],
    common_name: str,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    client: bool = False,
    server: bool = True,
    valid_for: timedelta = DEFAULT_VALIDITY,
) -> PemPair:
    """A certificate signed by ``ca`` for a TLS server, a client, or both; it expires no later than the CA."""
    if not (client or server):
        raise ValueError("a certificate must be for a server, a client, or both")
    ca_cert = x509.load_pem_x509_certificate(ca[0])
    ca_key = serialization.load_pem_private_key(ca[1], password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"the CA key must be an EC key, not {type(ca_key).__name__}")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    builder = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
            ca_cert.subject,
            key.public_key(),
            now - _BACKDATE,
            min(now + valid_for, ca_cert.not_valid_after_utc),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return PemPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_test_pki(directory: str | os.PathLike[str]) -> TestPki:
    """A fresh CA, server and client certificate written to ``directory`` (made if missing); keys mode 0600."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    server = issue_certificate(
        ca, "localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1", "::1"), server=True
    )
    client = issue_certificate(ca, "hodei-client", dns_names=(), ip_addresses=(), client=True, server=False)
    pki = TestPki(
        ca_file=root / "ca.pem",
        server_cert_file=root / "server.pem",
        server_key_file=root / "server-key.pem",
        client_cert_file=root / "client.pem",
        client_key_file=root / "client-key.pem",
    )
    _write(pki.ca_file, ca.cert_pem, mode=0o644)
    _write(pki.server_cert_file, server.cert_pem, mode=0o644)
    _write(pki.server_key_file, server.key_pem, mode=0o600)
    _write(pki.client_cert_file, client.cert_pem, mode=0o644)
    _write(pki.client_key_file, client.key_pem, mode=0o600)
    return pki


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _key_usage(
    *, digital_signature: bool, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte (a key is never readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(
            file.fileno(), mode
        )  # the file may have existed with another mode; umask may have narrowed it
        file.write(data)
