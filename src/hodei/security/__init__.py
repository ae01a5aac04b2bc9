"""Security: signed tokens for joining, for workers and for operators; TLS and mutual TLS from files.

Nothing here is wired into a server by importing it: the scheduler and the agent build what they need from
these parts (see :mod:`hodei.security.tokens`, :mod:`hodei.security.tls`, :mod:`hodei.security.certs`).
"""

from hodei.security.certs import (
    DEFAULT_VALIDITY,
    PemPair,
    TestPki,
    issue_certificate,
    make_ca,
    write_test_pki,
)
from hodei.security.tls import TlsConfig, channel_credentials, server_credentials, ssl_context_for_http
from hodei.security.tokens import (
    DEFAULT_LEEWAY,
    MAX_TOKEN_LENGTH,
    MIN_SECRET_BYTES,
    AuthError,
    AuthFailure,
    JoinClaims,
    JtiLedger,
    MemoryJtiLedger,
    OperatorClaims,
    PermissionDenied,
    TokenAuthority,
    TokenKey,
    TokenKind,
    Unauthenticated,
    WorkerClaims,
    generate_secret,
    load_key,
)

__all__ = [
    "DEFAULT_LEEWAY",
    "DEFAULT_VALIDITY",
    "MAX_TOKEN_LENGTH",
    "MIN_SECRET_BYTES",
    "AuthError",
    "AuthFailure",
    "JoinClaims",
    "JtiLedger",
    "MemoryJtiLedger",
    "OperatorClaims",
    "PemPair",
    "PermissionDenied",
    "TestPki",
    "TlsConfig",
    "TokenAuthority",
    "TokenKey",
    "TokenKind",
    "Unauthenticated",
    "WorkerClaims",
    "channel_credentials",
    "generate_secret",
    "issue_certificate",
    "load_key",
    "make_ca",
    "server_credentials",
    "ssl_context_for_http",
    "write_test_pki",
]
