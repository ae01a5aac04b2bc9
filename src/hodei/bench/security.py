"""The security a benchmark's scheduler runs with (``hodei bench --tls --auth``), to measure what it costs.

:meth:`BenchSecurity.prepared` writes a throw-away CA and token key to a temporary directory and says how the
scheduler process is started (``--tls-cert``/``--tls-key``, ``--auth-key``) and how the bench's clients,
agents and health probe talk to it (the CA, an operator token, a join token per agent).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hodei.security import ClientTlsConfig, TokenAuthority, generate_secret, write_test_pki

__all__ = ["PLAIN", "PLAINTEXT", "BenchSecurity", "PreparedSecurity"]


@dataclass(frozen=True, slots=True)
class PreparedSecurity:
    """What a scenario needs to reach a scheduler started with ``server_args``."""

    server_args: tuple[str, ...] = ()
    client_tls: ClientTlsConfig | None = None
    authority: TokenAuthority | None = None
    operator: str | None = None

    def join_token(self, worker_id: str) -> str | None:
        """A join token for an agent of the bench (None with auth off)."""
        return None if self.authority is None else self.authority.mint_join_token(worker_id, ttl=600)

    def probe_args(self) -> tuple[str, ...]:
        """The health probe's arguments after the address and duration: the CA to trust, if TLS is on."""
        if self.client_tls is None or self.client_tls.ca_file is None:
            return ()
        return (str(self.client_tls.ca_file),)


@dataclass(frozen=True, slots=True)
class BenchSecurity:
    """``tls``: the scheduler serves TLS (a throw-away CA); ``auth``: it requires tokens (HMAC key)."""

    tls: bool = False
    auth: bool = False

    @property
    def label(self) -> str:
        parts = [name for name, on in (("tls", self.tls), ("auth", self.auth)) if on]
        return "+".join(parts) or "plain"

    @contextlib.contextmanager
    def prepared(self) -> Iterator[PreparedSecurity]:
        if not (self.tls or self.auth):
            yield PreparedSecurity()
            return
        with tempfile.TemporaryDirectory(prefix="hodei-bench-security-") as directory:
            root = Path(directory)
            args: list[str] = []
            client_tls = authority = operator = None
            if self.tls:
                pki = write_test_pki(root / "pki")
                args += ["--tls-cert", str(pki.server_cert_file), "--tls-key", str(pki.server_key_file)]
                client_tls = ClientTlsConfig(pki.ca_file)
            if self.auth:
                secret = generate_secret()
                (root / "token.key").write_bytes(secret)
                args += ["--auth-key", str(root / "token.key")]
                authority = TokenAuthority(secret)
                operator = authority.mint_operator_token("bench")
            yield PreparedSecurity(tuple(args), client_tls, authority, operator)


PLAIN = BenchSecurity()
"""No TLS, no tokens: the bench's default."""

PLAINTEXT = PreparedSecurity()
"""How to reach a scheduler without TLS or tokens."""
