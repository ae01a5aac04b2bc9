"""Security: signed tokens for joining, for workers and for operators; TLS and mutual TLS from files.

Nothing here is wired into a server by importing it: the scheduler and the agent build what they need from
these parts (see :mod:`hodei.security._tokens` (minting and verifying), :mod:`hodei.security._claims` (what a
token says), :mod:`hodei.security._keys`, :mod:`hodei.security._access` (who may call what),
:mod:`hodei.security._config` (the scheduler's settings), :mod:`hodei.security._provisioning` (join tokens for
providers), :mod:`hodei.security._tls`, :mod:`hodei.security._certs`). ``docs/security.md`` tells how to use them.
"""

from hodei.security._access import (
    AUTHORIZATION,
    AccessPolicy,
    Grant,
    authorization_metadata,
    bearer_token,
)
from hodei.security._certs import (
    DEFAULT_VALIDITY,
    PemPair,
    TestPki,
    issue_certificate,
    make_ca,
    write_test_pki,
)
from hodei.security._claims import Claims, JoinClaims, OperatorClaims, WorkerClaims
from hodei.security._config import SchedulerSecurity
from hodei.security._keys import MIN_SECRET_BYTES, TokenKey, generate_secret, load_key
from hodei.security._ledger import JtiLedger, MemoryJtiLedger
from hodei.security._provisioning import JoinTokens
from hodei.security._refusals import AuthError, AuthFailure, PermissionDenied, TokenKind, Unauthenticated
from hodei.security._tls import (
    ClientTlsConfig,
    TlsConfig,
    channel_credentials,
    server_credentials,
    ssl_context_for_http,
)
from hodei.security._tokens import (
    DEFAULT_LEEWAY,
    DEFAULT_OPERATOR_TOKEN_TTL,
    DEFAULT_WORKER_CREDENTIAL_TTL,
    MAX_TOKEN_LENGTH,
    TokenAuthority,
)

__all__ = [
    "AUTHORIZATION",
    "DEFAULT_LEEWAY",
    "DEFAULT_OPERATOR_TOKEN_TTL",
    "DEFAULT_VALIDITY",
    "DEFAULT_WORKER_CREDENTIAL_TTL",
    "MAX_TOKEN_LENGTH",
    "MIN_SECRET_BYTES",
    "AccessPolicy",
    "AuthError",
    "AuthFailure",
    "Claims",
    "ClientTlsConfig",
    "Grant",
    "JoinClaims",
    "JoinTokens",
    "JtiLedger",
    "MemoryJtiLedger",
    "OperatorClaims",
    "PemPair",
    "PermissionDenied",
    "SchedulerSecurity",
    "TestPki",
    "TlsConfig",
    "TokenAuthority",
    "TokenKey",
    "TokenKind",
    "Unauthenticated",
    "WorkerClaims",
    "authorization_metadata",
    "bearer_token",
    "channel_credentials",
    "generate_secret",
    "issue_certificate",
    "load_key",
    "make_ca",
    "server_credentials",
    "ssl_context_for_http",
    "write_test_pki",
]
