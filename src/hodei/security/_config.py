"""SchedulerSecurity: what the scheduler requires of its callers (tokens) and how it listens (TLS)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hodei.security._access import AccessPolicy
from hodei.security._keys import load_key
from hodei.security._tls import TlsConfig
from hodei.security._tokens import DEFAULT_WORKER_CREDENTIAL_TTL, TokenAuthority

__all__ = ["SchedulerSecurity"]

StrPath = str | os.PathLike[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSecurity:
    """``access``: the rules every call must pass (None: auth off, anyone who reaches the port may do
    anything); ``tls``: the certificate the gRPC port serves, and the CA whose client certificates it requires
    (None: plaintext). The default is neither, for local use; a scheduler without auth that listens on
    anything but loopback says so in a warning at start."""

    access: AccessPolicy | None = None
    tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        if self.tls is not None:
            self.tls.check()  # a bad file is an error at start, naming the file, not a failed handshake later

    @property
    def auth(self) -> bool:
        return self.access is not None

    @property
    def tls_mode(self) -> str:
        """``off`` (plaintext), ``on`` (TLS), or ``mutual`` (clients present certificates too)."""
        return "off" if self.tls is None else "mutual" if self.tls.ca_file is not None else "on"

    @classmethod
    def from_files(
        cls,
        *,
        auth_key: StrPath | None = None,
        tls_cert: StrPath | None = None,
        tls_key: StrPath | None = None,
        tls_client_ca: StrPath | None = None,
        worker_credential_ttl: float | None = DEFAULT_WORKER_CREDENTIAL_TTL,
    ) -> SchedulerSecurity:
        """From the files of the configuration: the token key (:func:`~hodei.security.load_key`: an HMAC
        secret or an Ed25519 private key), the server's certificate and key, and the client CA (mutual TLS).
        Raises ValueError naming the file that is wrong (never showing a key's content)."""
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and its key")
        if tls_client_ca is not None and tls_cert is None:
            raise ValueError("a client CA (mutual TLS) needs the server's TLS certificate and key too")
        access = None
        if auth_key is not None:
            access = AccessPolicy(
                TokenAuthority(load_key(auth_key)), worker_credential_ttl=worker_credential_ttl
            )
        tls = None
        if tls_cert is not None and tls_key is not None:
            client_ca = None if tls_client_ca is None else Path(tls_client_ca)
            tls = TlsConfig(Path(tls_cert), Path(tls_key), client_ca)
        return cls(access=access, tls=tls)
