"""Join tokens, worker credentials and operator tokens: signed JWTs, one audience per kind.

A :class:`TokenAuthority` holds one key: an HMAC secret (``bytes``, HS256) or an Ed25519 key (EdDSA). With a
private key (or a secret) it mints and verifies; with an Ed25519 public key it only verifies. The three kinds:

- a **join token** (``aud=hodei-join``) lets one worker id register once, before it expires; it may also bind
  the worker's pool and labels;
- a **worker credential** (``aud=hodei-worker``) is what a registered worker presents afterwards: it is good
  for that worker id only, and for as long as its ``ttl`` (by default, for ever);
- an **operator token** (``aud=hodei-operator``) is for the CLI and the management service.

A token of one kind is never accepted as another. Verification errors::

    HodeiError
    └── AuthError              a credential was refused; ``reason`` says why, ``code`` how to answer
        ├── Unauthenticated        UNAUTHENTICATED: none, malformed, forged, expired, another kind, replayed
        └── PermissionDenied       PERMISSION_DENIED: valid, but bound to another worker, pool or labels

No message ever contains the token.
"""

from __future__ import annotations

import enum
import heapq
import math
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hodei.domain import utcnow, validate_worker_id
from hodei.errors import ErrorCode, HodeiError

__all__ = [
    "DEFAULT_LEEWAY",
    "MAX_TOKEN_LENGTH",
    "MIN_SECRET_BYTES",
    "AuthError",
    "AuthFailure",
    "JoinClaims",
    "JtiLedger",
    "MemoryJtiLedger",
    "OperatorClaims",
    "PermissionDenied",
    "TokenAuthority",
    "TokenKey",
    "TokenKind",
    "Unauthenticated",
    "WorkerClaims",
    "generate_secret",
    "load_key",
]

MIN_SECRET_BYTES = 32
DEFAULT_LEEWAY = 5.0  # seconds of clock skew forgiven on ``exp`` and ``iat``
MAX_TOKEN_LENGTH = 4096  # ours are a few hundred characters; anything longer is refused unread

TokenKey = bytes | Ed25519PrivateKey | Ed25519PublicKey


class TokenKind(enum.StrEnum):
    """The kinds of token, each its own audience (``aud``)."""

    JOIN = "hodei-join"
    WORKER = "hodei-worker"
    OPERATOR = "hodei-operator"

    @property
    def noun(self) -> str:
        return _NOUNS[self]


_NOUNS = {
    TokenKind.JOIN: "join token",
    TokenKind.WORKER: "worker credential",
    TokenKind.OPERATOR: "operator token",
}


class AuthFailure(enum.StrEnum):
    """Why a credential was refused (a stable value, fit for a metric label)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_KIND = "wrong_kind"
    REPLAYED = "replayed"
    WRONG_WORKER = "wrong_worker"
    WRONG_POOL = "wrong_pool"
    WRONG_LABELS = "wrong_labels"


# The only texts a refusal shows: made of the kind and the claimed worker id, never of the token.
_MESSAGES = {
    AuthFailure.MISSING: "no {noun}",
    AuthFailure.MALFORMED: "malformed {noun}",
    AuthFailure.BAD_SIGNATURE: "{noun} is not signed by a trusted key",
    AuthFailure.EXPIRED: "{noun} expired",
    AuthFailure.NOT_YET_VALID: "{noun} issued in the future",
    AuthFailure.WRONG_KIND: "not a {noun}",
    AuthFailure.REPLAYED: "{noun} already used",
    AuthFailure.WRONG_WORKER: "{noun} is for another worker than {worker_id!r}",
    AuthFailure.WRONG_POOL: "{noun} is bound to another pool",
    AuthFailure.WRONG_LABELS: "{noun} is bound to other labels",
}
_DENIALS = frozenset({AuthFailure.WRONG_WORKER, AuthFailure.WRONG_POOL, AuthFailure.WRONG_LABELS})


class AuthError(HodeiError):
    """A credential was refused. ``kind`` is what was expected, ``worker_id`` the worker the caller claimed.

    :meth:`refusal` picks the subclass for a ``reason``; the message is made from ``reason``, ``kind`` and
    ``worker_id`` alone.
    """

    code = ErrorCode.UNAUTHENTICATED

    def __init__(self, reason: AuthFailure, *, kind: TokenKind, worker_id: str | None = None) -> None:
        self.reason = reason
        self.kind = kind
        self.worker_id = worker_id
        self.message = _MESSAGES[reason].format(noun=kind.noun, worker_id=worker_id)
        super().__init__(self.message)

    @staticmethod
    def refusal(reason: AuthFailure, *, kind: TokenKind, worker_id: str | None = None) -> AuthError:
        """:class:`PermissionDenied` for a credential bound to another worker, pool or labels; else
        :class:`Unauthenticated`."""
        error_type = PermissionDenied if reason in _DENIALS else Unauthenticated
        return error_type(reason, kind=kind, worker_id=worker_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason.value}, message={self.message!r})"


class Unauthenticated(AuthError):
    """No credential, or one that does not prove anything: answer ``UNAUTHENTICATED``."""


class PermissionDenied(AuthError):
    """A valid credential for someone else: answer ``PERMISSION_DENIED``."""

    code = ErrorCode.PERMISSION_DENIED


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinClaims:
    """What a valid join token says; ``pool`` and ``labels`` are None when the token does not bind them."""

    worker_id: str
    token_id: str
    issued_at: datetime
    expires_at: datetime
    pool: str | None = None
    labels: Mapping[str, str] | None = None
    single_use: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerClaims:
    """What a valid worker credential says; ``expires_at`` is None for a credential that does not expire."""

    worker_id: str
    token_id: str
    issued_at: datetime
    expires_at: datetime | None = None
    incarnation: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorClaims:
    """What a valid operator token says."""

    name: str
    token_id: str
    issued_at: datetime
    expires_at: datetime | None = None


class JtiLedger(Protocol):
    """The replay guard's port: remembers the ids of used single-use tokens until they expire."""

    def claim(self, jti: str, expires_at: datetime) -> bool:
        """Record ``jti`` as used; False when it was already used."""
        ...


class MemoryJtiLedger:
    """A :class:`JtiLedger` in this process's memory; an id is forgotten once its ``expires_at`` has passed."""

    def __init__(self, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._clock = clock
        self._used: dict[str, datetime] = {}
        self._by_expiry: list[tuple[datetime, str]] = []
        self._lock = threading.Lock()

    def claim(self, jti: str, expires_at: datetime) -> bool:
        with self._lock:
            self._forget_expired()
            if jti in self._used:
                return False
            self._used[jti] = expires_at
            heapq.heappush(self._by_expiry, (expires_at, jti))
            return True

    def __len__(self) -> int:
        """How many ids are remembered now."""
        with self._lock:
            self._forget_expired()
            return len(self._used)

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._by_expiry and self._by_expiry[0][0] < now:
            _, jti = heapq.heappop(self._by_expiry)
            del self._used[jti]


class TokenAuthority:
    """Mints and verifies hodei's tokens with one key (see the module docstring).

    ``leeway`` (seconds) forgives clock skew; ``ledger`` remembers used single-use join tokens (share one between
    replicas that verify the same tokens); ``clock`` is read for minting and as the default ``now``.
    """

    def __init__(
        self,
        key: TokenKey,
        *,
        leeway: float = DEFAULT_LEEWAY,
        ledger: JtiLedger | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._signing_key: bytes | Ed25519PrivateKey | None
        self._verifying_key: bytes | Ed25519PublicKey
        if isinstance(key, bytes):
            if len(key) < MIN_SECRET_BYTES:
                raise ValueError(f"an HMAC secret must be at least {MIN_SECRET_BYTES} bytes, got {len(key)}")
            self.algorithm, self._signing_key, self._verifying_key = "HS256", key, key
        elif isinstance(key, Ed25519PrivateKey):
            self.algorithm, self._signing_key, self._verifying_key = "EdDSA", key, key.public_key()
        elif isinstance(key, Ed25519PublicKey):
            self.algorithm, self._signing_key, self._verifying_key = "EdDSA", None, key
        else:
            raise TypeError(f"a token key is bytes or an Ed25519 key, not {type(key).__name__}")
        if not leeway >= 0:
            raise ValueError(f"leeway must be >= 0 seconds, got {leeway!r}")
        self.leeway = leeway
        self.clock = clock
        self.ledger: JtiLedger = MemoryJtiLedger(clock=clock) if ledger is None else ledger

    @property
    def can_mint(self) -> bool:
        """False for an authority that holds only an Ed25519 public key."""
        return self._signing_key is not None

    def mint_join_token(
        self,
        worker_id: str,
        *,
        ttl: float,
        pool: str | None = None,
        labels: Mapping[str, str] | None = None,
        single_use: bool = True,
    ) -> str:
        """A join token for ``worker_id``, valid for ``ttl`` seconds; it binds ``pool``/``labels`` when given."""
        claims: dict[str, Any] = {"single_use": single_use}
        if pool is not None:
            claims["pool"] = pool
        if labels is not None:
            claims["labels"] = dict(labels)
        return self._mint(TokenKind.JOIN, _checked_id(worker_id, "worker_id"), _checked_ttl(ttl), claims)

    def verify_join_token(
        self,
        token: str | None,
        *,
        worker_id: str,
        pool: str | None = None,
        labels: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> JoinClaims:
        """The claims of a join token presented to register ``worker_id`` with ``pool`` and ``labels``.

        A token that binds a pool (labels) admits exactly that pool (those labels). A single-use token is spent
        only once every other check has passed. Raises :class:`Unauthenticated` or :class:`PermissionDenied`.
        """
        refused = partial(AuthError.refusal, kind=TokenKind.JOIN, worker_id=worker_id)
        payload = self._decode(TokenKind.JOIN, token, now, worker_id=worker_id, expires=True)
        bound_pool, bound_labels = payload.get("pool"), payload.get("labels")
        single_use = payload.get("single_use", True)
        if not (
            (bound_pool is None or isinstance(bound_pool, str))
            and (bound_labels is None or _is_labels(bound_labels))
            and isinstance(single_use, bool)
        ):
            raise refused(AuthFailure.MALFORMED)
        if payload["sub"] != worker_id:
            raise refused(AuthFailure.WRONG_WORKER)
        if bound_pool is not None and pool != bound_pool:
            raise refused(AuthFailure.WRONG_POOL)
        if bound_labels is not None and dict(labels or {}) != bound_labels:
            raise refused(AuthFailure.WRONG_LABELS)
        claims = JoinClaims(
            worker_id=payload["sub"],
            token_id=payload["jti"],
            issued_at=_moment(payload["iat"]),
            expires_at=_moment(payload["exp"]),
            pool=bound_pool,
            labels=None if bound_labels is None else MappingProxyType(bound_labels),
            single_use=single_use,
        )
        remember_until = claims.expires_at + timedelta(seconds=self.leeway)
        if single_use and not self.ledger.claim(claims.token_id, remember_until):
            raise refused(AuthFailure.REPLAYED)
        return claims

    def mint_worker_credential(
        self, worker_id: str, incarnation: int | None = None, *, ttl: float | None = None
    ) -> str:
        """The credential a registered worker presents from now on; it expires after ``ttl`` s (None: never)."""
        claims: dict[str, Any] = {} if incarnation is None else {"inc": incarnation}
        checked_ttl = None if ttl is None else _checked_ttl(ttl)
        return self._mint(TokenKind.WORKER, _checked_id(worker_id, "worker_id"), checked_ttl, claims)

    def verify_worker_credential(
        self, token: str | None, *, worker_id: str, now: datetime | None = None
    ) -> WorkerClaims:
        """The claims of a credential presented to act as ``worker_id``; raises :class:`AuthError`."""
        refused = partial(AuthError.refusal, kind=TokenKind.WORKER, worker_id=worker_id)
        payload = self._decode(TokenKind.WORKER, token, now, worker_id=worker_id, expires=False)
        incarnation = payload.get("inc")
        if incarnation is not None and not _is_int(incarnation):
            raise refused(AuthFailure.MALFORMED)
        if payload["sub"] != worker_id:
            raise refused(AuthFailure.WRONG_WORKER)
        return WorkerClaims(
            worker_id=payload["sub"],
            token_id=payload["jti"],
            issued_at=_moment(payload["iat"]),
            expires_at=_moment(payload["exp"]) if "exp" in payload else None,
            incarnation=incarnation,
        )

    def mint_operator_token(self, name: str, ttl: float | None = None) -> str:
        """A token for the operator ``name``; it expires after ``ttl`` s (None: never)."""
        checked_ttl = None if ttl is None else _checked_ttl(ttl)
        return self._mint(TokenKind.OPERATOR, _checked_id(name, "name"), checked_ttl, {})

    def verify_operator_token(self, token: str | None, *, now: datetime | None = None) -> OperatorClaims:
        """The claims of an operator token; raises :class:`Unauthenticated`."""
        payload = self._decode(TokenKind.OPERATOR, token, now, worker_id=None, expires=False)
        return OperatorClaims(
            name=payload["sub"],
            token_id=payload["jti"],
            issued_at=_moment(payload["iat"]),
            expires_at=_moment(payload["exp"]) if "exp" in payload else None,
        )

    def _mint(self, kind: TokenKind, subject: str, ttl: float | None, claims: dict[str, Any]) -> str:
        if self._signing_key is None:
            raise ValueError(
                "this TokenAuthority holds an Ed25519 public key: it verifies tokens but cannot mint"
            )
        issued_at = math.floor(self.clock().timestamp())
        payload: dict[str, Any] = {
            "aud": kind.value,
            "sub": subject,
            "iat": issued_at,
            "jti": secrets.token_urlsafe(16),
        }
        if ttl is not None:
            payload["exp"] = issued_at + math.ceil(ttl)
        return jwt.encode(payload | claims, self._signing_key, algorithm=self.algorithm)

    def _decode(
        self,
        kind: TokenKind,
        token: str | None,
        now: datetime | None,
        *,
        worker_id: str | None,
        expires: bool,
    ) -> dict[str, Any]:
        """The payload of a token of ``kind`` whose signature, audience and times are good."""
        refused = partial(AuthError.refusal, kind=kind, worker_id=worker_id)
        if not token:
            raise refused(AuthFailure.MISSING)
        if len(token) > MAX_TOKEN_LENGTH:
            raise refused(AuthFailure.MALFORMED)
        try:
            # PyJWT checks the signature, then the audience; the times are checked below against ``now``.
            payload: dict[str, Any] = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self.algorithm],
                audience=kind.value,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "strict_aud": True},
            )
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError) as exc:
            raise refused(AuthFailure.BAD_SIGNATURE) from exc
        except jwt.InvalidAudienceError as exc:
            raise refused(AuthFailure.WRONG_KIND) from exc
        except jwt.MissingRequiredClaimError as exc:
            # The audience is the one claim PyJWT is asked to require: a token without one is of no kind.
            raise refused(AuthFailure.WRONG_KIND) from exc
        except jwt.InvalidTokenError as exc:
            raise refused(AuthFailure.MALFORMED) from exc
        exp = payload.get("exp")
        if not (
            isinstance(payload.get("sub"), str)
            and isinstance(payload.get("jti"), str)
            and _is_int(payload.get("iat"))
            and (_is_int(exp) or (exp is None and not expires))
        ):
            raise refused(AuthFailure.MALFORMED)
        moment = (self.clock() if now is None else now).timestamp()
        if payload["iat"] > moment + self.leeway:
            raise refused(AuthFailure.NOT_YET_VALID)
        if exp is not None and moment >= exp + self.leeway:
            raise refused(AuthFailure.EXPIRED)
        return payload


def load_key(path: str | os.PathLike[str]) -> TokenKey:
    """A token key from a file: a PEM Ed25519 private or public key, or else a raw secret (stripped, >= 32 bytes).

    Raises ValueError naming the file (never showing its content) when it holds neither.
    """
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            if b"PRIVATE KEY" in data:
                key: object = serialization.load_pem_private_key(data, password=None)
            else:
                key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"{path}: not a PEM key that can be read without a password") from exc
        if not isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
            raise ValueError(f"{path}: holds a {type(key).__name__}; a token key must be Ed25519")
        return key
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{path}: a token secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}"
        )
    return secret


def generate_secret() -> bytes:
    """A fresh HMAC secret: 64 URL-safe characters (384 random bits), safe to write to a file as it is."""
    return secrets.token_urlsafe(48).encode("ascii")


def _checked_id(value: str, field_name: str) -> str:
    violations = validate_worker_id(value, field_name=field_name)
    if violations:
        raise ValueError("; ".join(str(v) for v in violations))
    return value


def _checked_ttl(ttl: float) -> float:
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return ttl


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_labels(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
