"""What a valid token says: the claims of a join token, a worker credential and an operator token, read from a
verified payload (:func:`join_claims`, :func:`worker_claims`, :func:`operator_claims`), and whether they admit a
registration (:func:`check_binding`). Signatures and times are :class:`~hodei.security._tokens.TokenAuthority`'s
business; here a payload's shape is checked, and a malformed one refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from types import MappingProxyType
from typing import Any

import jwt

from hodei.security._refusals import AuthError, AuthFailure, TokenKind

__all__ = [
    "Claims",
    "JoinClaims",
    "OperatorClaims",
    "WorkerClaims",
    "check_binding",
    "claimed_kind",
    "is_int",
    "join_claims",
    "kind_of",
    "operator_claims",
    "worker_claims",
]


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
    """What a valid worker credential says; ``expires_at`` is None for a credential that does not expire;
    ``pool`` and ``labels`` are None when it does not bind them (it binds what its join token bound)."""

    worker_id: str
    token_id: str
    issued_at: datetime
    expires_at: datetime | None = None
    incarnation: int | None = None
    pool: str | None = None
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorClaims:
    """What a valid operator token says."""

    name: str
    token_id: str
    issued_at: datetime
    expires_at: datetime | None = None


Claims = JoinClaims | WorkerClaims | OperatorClaims
"""What a valid token of any kind says (:meth:`~hodei.security.TokenAuthority.identify`)."""


_KIND_OF: dict[type, TokenKind] = {
    JoinClaims: TokenKind.JOIN,
    WorkerClaims: TokenKind.WORKER,
    OperatorClaims: TokenKind.OPERATOR,
}


def kind_of(claims: Claims) -> TokenKind:
    """The kind of token whose claims these are."""
    return _KIND_OF[type(claims)]


def claimed_kind(token: str) -> TokenKind | None:
    """The kind a token says it is (its ``aud``), read without checking anything; None when unreadable."""
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    audience = payload.get("aud") if isinstance(payload, dict) else None
    try:
        return TokenKind(audience) if isinstance(audience, str) else None
    except ValueError:
        return None


def join_claims(payload: dict[str, Any], *, worker_id: str | None) -> JoinClaims:
    bound_pool, bound_labels = payload.get("pool"), payload.get("labels")
    single_use = payload.get("single_use", True)
    if not (
        (bound_pool is None or isinstance(bound_pool, str))
        and (bound_labels is None or _is_labels(bound_labels))
        and isinstance(single_use, bool)
    ):
        raise AuthError.refusal(AuthFailure.MALFORMED, kind=TokenKind.JOIN, worker_id=worker_id)
    return JoinClaims(
        worker_id=payload["sub"],
        token_id=payload["jti"],
        issued_at=_moment(payload["iat"]),
        expires_at=_moment(payload["exp"]),
        pool=bound_pool,
        labels=None if bound_labels is None else MappingProxyType(bound_labels),
        single_use=single_use,
    )


def worker_claims(payload: dict[str, Any], *, worker_id: str | None) -> WorkerClaims:
    incarnation = payload.get("inc")
    bound_pool, bound_labels = payload.get("pool"), payload.get("labels")
    if not (
        (incarnation is None or is_int(incarnation))
        and (bound_pool is None or isinstance(bound_pool, str))
        and (bound_labels is None or _is_labels(bound_labels))
    ):
        raise AuthError.refusal(AuthFailure.MALFORMED, kind=TokenKind.WORKER, worker_id=worker_id)
    return WorkerClaims(
        worker_id=payload["sub"],
        token_id=payload["jti"],
        issued_at=_moment(payload["iat"]),
        expires_at=_moment(payload["exp"]) if "exp" in payload else None,
        incarnation=incarnation,
        pool=bound_pool,
        labels=None if bound_labels is None else MappingProxyType(bound_labels),
    )


def check_binding(
    claims: JoinClaims | WorkerClaims,
    *,
    worker_id: str,
    pool: str | None,
    labels: Mapping[str, str] | None,
) -> None:
    """Refuse (:class:`PermissionDenied`) a registration of ``worker_id`` with ``pool`` and ``labels`` that the
    token's claims do not admit: another worker, another pool than the bound one, other labels than the bound
    ones (exactly those: none more, none fewer, none changed)."""
    kind = TokenKind.JOIN if isinstance(claims, JoinClaims) else TokenKind.WORKER
    refused = partial(AuthError.refusal, kind=kind, worker_id=worker_id)
    if claims.worker_id != worker_id:
        raise refused(AuthFailure.WRONG_WORKER)
    if claims.pool is not None and pool != claims.pool:
        raise refused(AuthFailure.WRONG_POOL)
    if claims.labels is not None and dict(labels or {}) != claims.labels:
        raise refused(AuthFailure.WRONG_LABELS)


def operator_claims(payload: dict[str, Any]) -> OperatorClaims:
    return OperatorClaims(
        name=payload["sub"],
        token_id=payload["jti"],
        issued_at=_moment(payload["iat"]),
        expires_at=_moment(payload["exp"]) if "exp" in payload else None,
    )


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_labels(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
