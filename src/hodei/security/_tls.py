"""TLS and mutual TLS for gRPC and for ``/metrics``, built from the certificate files named in configuration.

Every builder reads and checks its files first, so that a wrong path, a file that is not PEM, or a key that
does not match its certificate is a ValueError naming the file when the process starts, not a failed handshake
later. A server given a client CA requires client certificates signed by it (mutual TLS).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, fields
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from hodei.domain import FieldViolation

__all__ = [
    "ClientTlsConfig",
    "TlsConfig",
    "channel_credentials",
    "server_credentials",
    "ssl_context_for_http",
]

StrPath = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """A certificate, its key, and optionally a CA: on a server, the CA whose client certificates are required."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                object.__setattr__(self, item.name, Path(value))

    def violations(self) -> list[FieldViolation]:
        """Every problem with the files: missing, unreadable, not PEM, or a key that is not the certificate's."""
        found: list[FieldViolation] = []
        for name, check in (
            ("cert_file", _certificates),
            ("key_file", _private_key),
            ("ca_file", _certificates),
        ):
            path = getattr(self, name)
            if path is None:
                continue
            try:
                check(path)
            except ValueError as exc:
                found.append(FieldViolation(name, str(exc)))
        if not found:
            try:
                _identity(self.cert_file, self.key_file)
            except ValueError as exc:
                found.append(FieldViolation("key_file", str(exc)))
        return found

    def check(self) -> None:
        """Raise ValueError listing every violation."""
        found = self.violations()
        if found:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(str(v) for v in found))

    def server_credentials(self) -> grpc.ServerCredentials:
        """:func:`server_credentials` from these files (mutual TLS when ``ca_file`` is set)."""
        return server_credentials(self.cert_file, self.key_file, client_ca_file=self.ca_file)

    def ssl_context_for_http(self) -> ssl.SSLContext:
        """:func:`ssl_context_for_http` from these files (client certificates required when ``ca_file`` is set)."""
        return ssl_context_for_http(self.cert_file, self.key_file, self.ca_file)


@dataclass(frozen=True, slots=True)
class ClientTlsConfig:
    """A client's TLS: the CA it trusts (None: the system's roots), and the certificate and key it presents to a
    server that requires one (mutual TLS; both or neither)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                object.__setattr__(self, item.name, Path(value))

    def violations(self) -> list[FieldViolation]:
        """Every problem with the files, as :meth:`TlsConfig.violations` finds them."""
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            return [FieldViolation(missing, "a client certificate needs both cert_file and key_file")]
        if self.cert_file is not None and self.key_file is not None:
            return TlsConfig(self.cert_file, self.key_file, self.ca_file).violations()
        if self.ca_file is None:
            return []
        try:
            _certificates(self.ca_file)
        except ValueError as exc:
            return [FieldViolation("ca_file", str(exc))]
        return []

    def check(self) -> None:
        """Raise ValueError listing every violation."""
        found = self.violations()
        if found:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(str(v) for v in found))

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """:func:`channel_credentials` from these files."""
        return channel_credentials(self.ca_file, cert_file=self.cert_file, key_file=self.key_file)


def server_credentials(
    cert_file: StrPath, key_file: StrPath, *, client_ca_file: StrPath | None = None
) -> grpc.ServerCredentials:
    """Credentials for ``server.add_secure_port``; with ``client_ca_file``, clients must present a certificate."""
    cert, key = _identity(cert_file, key_file)
    if client_ca_file is None:
        return grpc.ssl_server_credentials([(key, cert)])
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=_ca_bundle(client_ca_file), require_client_auth=True
    )


def channel_credentials(
    ca_file: StrPath | None, *, cert_file: StrPath | None = None, key_file: StrPath | None = None
) -> grpc.ChannelCredentials:
    """Credentials for ``grpc.aio.secure_channel``: trust ``ca_file`` (None: the system's roots), and present
    ``cert_file``/``key_file`` when given (both or neither)."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")
    roots = None if ca_file is None else _ca_bundle(ca_file)
    if cert_file is None or key_file is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    cert, key = _identity(cert_file, key_file)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=cert)


def ssl_context_for_http(
    cert_file: StrPath, key_file: StrPath, client_ca_file: StrPath | None = None
) -> ssl.SSLContext:
    """A server-side context (TLS 1.2 or later) for HTTPS; with ``client_ca_file``, client certificates are required."""
    _identity(cert_file, key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(cadata=_ca_bundle(client_ca_file).decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _read(path: StrPath) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ValueError(f"{path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ValueError(f"{path} is a directory, not a file") from exc
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror}") from exc


def _certificates(path: StrPath) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path)
    try:
        return data, x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path} holds no PEM certificate") from exc


def _private_key(path: StrPath) -> tuple[bytes, PrivateKeyTypes]:
    data = _read(path)
    try:
        return data, serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{path} holds no PEM private key that can be read without a password") from exc


def _ca_bundle(path: StrPath) -> bytes:
    return _certificates(path)[0]


def _identity(cert_file: StrPath, key_file: StrPath) -> tuple[bytes, bytes]:
    """The certificate chain and key, as PEM, once checked to belong together."""
    cert_pem, chain = _certificates(cert_file)
    key_pem, key = _private_key(key_file)
    if key.public_key() != chain[0].public_key():
        raise ValueError(f"{key_file} is not the private key of the certificate in {cert_file}")
    return cert_pem, key_pem
