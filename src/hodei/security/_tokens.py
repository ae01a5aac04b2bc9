"""Join tokens, worker credentials and operator tokens: signed JWTs, one audience per kind.

A :class:`TokenAuthority` holds one key: an HMAC secret (``bytes``, HS256) or an Ed25519 key (EdDSA). With a
private key (or a secret) it mints and verifies; with an Ed25519 public key it only verifies. The three kinds:

- a **join token** (``aud=hodei-join``) lets one worker id register once (one incarnation), before it expires
  (the same registration retried, after its answer was lost, is not a second use); it may also bind the
  worker's pool and labels;
- a **worker credential** (``aud=hodei-worker``) is what a registered worker presents afterwards: it is good
  for that worker id only, with the pool and labels its join token bound (it carries the binding on), and
  for as long as its ``ttl``;
- an **operator token** (``aud=hodei-operator``) is for the CLI and the management service; it expires after
  :data:`DEFAULT_OPERATOR_TOKEN_TTL` unless its minter says otherwise.

A token of one kind is never accepted as another. A refusal is an :class:`~hodei.security._refusals.AuthError`
(:mod:`hodei.security._refusals` draws the tree): ``Unauthenticated`` or ``PermissionDenied``. Single-use join
tokens are remembered by a :class:`~hodei.security._ledger.JtiLedger`.

:meth:`TokenAuthority.identify` reads a token of any kind (a caller need not say which it holds);
:meth:`TokenAuthority.admit_join` then binds a join token to the registration and spends it. No message ever
contains the token.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hodei._kept import Recent
from hodei.domain import utcnow, validate_worker_id
from hodei.security._claims import (
    Claims,
    JoinClaims,
    OperatorClaims,
    WorkerClaims,
    check_binding,
    claimed_kind,
    is_int,
    join_claims,
    kind_of,
    operator_claims,
    worker_claims,
)
from hodei.security._keys import MIN_SECRET_BYTES, TokenKey
from hodei.security._ledger import JtiLedger, MemoryJtiLedger
from hodei.security._refusals import AuthError, AuthFailure, TokenKind

__all__ = [
    "DEFAULT_LEEWAY",
    "DEFAULT_OPERATOR_TOKEN_TTL",
    "DEFAULT_WORKER_CREDENTIAL_TTL",
    "MAX_TOKEN_LENGTH",
    "TokenAuthority",
]

DEFAULT_LEEWAY = 5.0  # seconds of clock skew forgiven on ``exp`` and ``iat``
MAX_TOKEN_LENGTH = 4096  # ours are a few hundred characters; anything longer is refused unread
DEFAULT_WORKER_CREDENTIAL_TTL = 7 * 24 * 3600.0
"""Seconds a worker credential the scheduler hands out is good for (renewed at every hello): a week, so that an
agent rides out an outage of days, and a credential leaked from a worker gone for good dies with time."""
DEFAULT_OPERATOR_TOKEN_TTL = 30 * 24 * 3600.0
"""Seconds an operator token is good for, unless its minter says otherwise (``ttl=None``: for ever)."""
IDENTIFIED_CACHE_SIZE = 4096  # tokens whose signature identify() checked, remembered (their times are not)


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
        # identify()'s verified tokens: checking a signature again costs tens of µs on every call of a client
        # that presents the same token each time. Times are checked on every use; the oldest entry goes first.
        self._identified: Recent[str, tuple[Claims, int, int | None]] = Recent(IDENTIFIED_CACHE_SIZE)

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
        incarnation: int = 0,
        now: datetime | None = None,
    ) -> JoinClaims:
        """The claims of a join token presented to register ``worker_id`` with ``pool`` and ``labels``.

        A token that binds a pool (labels) admits exactly that pool (those labels). A single-use token is spent
        only once every other check has passed. Raises :class:`Unauthenticated` or :class:`PermissionDenied`.
        """
        payload = self._decode(TokenKind.JOIN, token, now, worker_id=worker_id, expires=True)
        claims = join_claims(payload, worker_id=worker_id)
        return self.admit_join(claims, worker_id=worker_id, pool=pool, labels=labels, incarnation=incarnation)

    def admit_join(
        self,
        claims: JoinClaims,
        *,
        worker_id: str,
        pool: str | None = None,
        labels: Mapping[str, str] | None = None,
        incarnation: int = 0,
    ) -> JoinClaims:
        """``claims`` (of a join token already verified, by :meth:`identify`) admitted for registering
        ``worker_id`` (its ``incarnation``) with ``pool`` and ``labels``: the bindings are checked, then a
        single-use token is spent — for this registration: the same one retried is admitted again.
        Raises :class:`PermissionDenied` (another worker, pool or labels) or :class:`Unauthenticated`
        (already used by another registration)."""
        refused = partial(AuthError.refusal, kind=TokenKind.JOIN, worker_id=worker_id)
        check_binding(claims, worker_id=worker_id, pool=pool, labels=labels)
        if claims.single_use and not self.ledger.claim(
            claims.token_id, self.remember_until(claims), worker_id, incarnation
        ):
            raise refused(AuthFailure.REPLAYED)
        return claims

    def remember_until(self, claims: JoinClaims) -> datetime:
        """Until when a spent join token must be remembered: as long as it could still be accepted."""
        return claims.expires_at + timedelta(seconds=self.leeway)

    def mint_worker_credential(
        self,
        worker_id: str,
        incarnation: int | None = None,
        *,
        ttl: float | None = None,
        pool: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """The credential a registered worker presents from now on; it expires after ``ttl`` s (None: never),
        and binds ``pool``/``labels`` when given (a worker holding it may register with those alone)."""
        claims: dict[str, Any] = {} if incarnation is None else {"inc": incarnation}
        if pool is not None:
            claims["pool"] = pool
        if labels is not None:
            claims["labels"] = dict(labels)
        checked_ttl = None if ttl is None else _checked_ttl(ttl)
        return self._mint(TokenKind.WORKER, _checked_id(worker_id, "worker_id"), checked_ttl, claims)

    def verify_worker_credential(
        self, token: str | None, *, worker_id: str, now: datetime | None = None
    ) -> WorkerClaims:
        """The claims of a credential presented to act as ``worker_id``; raises :class:`AuthError`."""
        payload = self._decode(TokenKind.WORKER, token, now, worker_id=worker_id, expires=False)
        claims = worker_claims(payload, worker_id=worker_id)
        if claims.worker_id != worker_id:
            raise AuthError.refusal(AuthFailure.WRONG_WORKER, kind=TokenKind.WORKER, worker_id=worker_id)
        return claims

    def mint_operator_token(self, name: str, ttl: float | None = DEFAULT_OPERATOR_TOKEN_TTL) -> str:
        """A token for the operator ``name``; it expires after ``ttl`` s (by default 30 days; None: never)."""
        checked_ttl = None if ttl is None else _checked_ttl(ttl)
        return self._mint(TokenKind.OPERATOR, _checked_id(name, "name"), checked_ttl, {})

    def verify_operator_token(self, token: str | None, *, now: datetime | None = None) -> OperatorClaims:
        """The claims of an operator token; raises :class:`Unauthenticated`."""
        return operator_claims(self._decode(TokenKind.OPERATOR, token, now, worker_id=None, expires=False))

    def identify(self, token: str | None, *, now: datetime | None = None) -> Claims:
        """The claims of a token of any kind whose signature, kind and times are good: what the caller holds,
        read from the token itself. Nothing is bound and nothing is spent: a join token is admitted by
        :meth:`admit_join`, a worker credential is good for its own ``worker_id`` only.

        Raises :class:`Unauthenticated` (none, malformed, of no kind of ours, forged, expired).
        """
        refused = partial(AuthError.refusal, kind=None)
        if not token:
            raise refused(AuthFailure.MISSING)
        known = self._identified.get(token)
        if known is not None:
            claims, issued_at, expires_at = known
            self._check_times(kind_of(claims), issued_at, expires_at, now, worker_id=None)
            return claims
        if len(token) > MAX_TOKEN_LENGTH:
            raise refused(AuthFailure.MALFORMED)
        kind = claimed_kind(token)
        if kind is None:
            raise refused(AuthFailure.MALFORMED)
        # The claimed kind only chooses the verifier, which checks the signature and the audience again.
        payload = self._decode(kind, token, now, worker_id=None, expires=kind is TokenKind.JOIN)
        claims = (
            join_claims(payload, worker_id=None)
            if kind is TokenKind.JOIN
            else worker_claims(payload, worker_id=None)
            if kind is TokenKind.WORKER
            else operator_claims(payload)
        )
        self._identified.put(token, (claims, payload["iat"], payload.get("exp")))
        return claims

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
            and is_int(payload.get("iat"))
            and (is_int(exp) or (exp is None and not expires))
        ):
            raise refused(AuthFailure.MALFORMED)
        self._check_times(kind, payload["iat"], exp, now, worker_id=worker_id)
        return payload

    def _check_times(
        self,
        kind: TokenKind,
        issued_at: int,
        expires_at: int | None,
        now: datetime | None,
        *,
        worker_id: str | None,
    ) -> None:
        moment = (self.clock() if now is None else now).timestamp()
        if issued_at > moment + self.leeway:
            raise AuthError.refusal(AuthFailure.NOT_YET_VALID, kind=kind, worker_id=worker_id)
        if expires_at is not None and moment >= expires_at + self.leeway:
            raise AuthError.refusal(AuthFailure.EXPIRED, kind=kind, worker_id=worker_id)


def _checked_id(value: str, field_name: str) -> str:
    violations = validate_worker_id(value, field_name=field_name)
    if violations:
        raise ValueError("; ".join(str(v) for v in violations))
    return value


def _checked_ttl(ttl: float) -> float:
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return ttl
