"""Who may call what on the scheduler: the rules, free of gRPC (the servicer reads the metadata and asks).

A caller presents one token in the ``authorization`` metadata, as ``Bearer <token>``; its kind is read from
the token itself. What each kind may do:

==========================  ==================================================================================
operator token              every call
join token for worker W     ``RegisterWorker`` and ``Connect`` (the hello) of W, for one registration (single
                            use: that incarnation, retried, is admitted again), with the pool and labels the
                            token binds; the answer carries W's worker credential
worker credential for W     ``RegisterWorker``, ``Connect`` and ``UnregisterWorker`` of W, registering with
                            the pool and labels its join token bound (the credential carries them on); the
                            answer of a registration or hello carries a fresh credential (same binding)
==========================  ==================================================================================

Worker credentials expire (:data:`~hodei.security._tokens.DEFAULT_WORKER_CREDENTIAL_TTL`, a week, unless the
scheduler says otherwise) and are renewed at every hello, so that a connected fleet never runs out and an agent
rides out an outage of days; a credential that leaked from a worker gone for good dies with time.

No credential, or one that proves nothing (malformed, forged, expired, replayed) is ``UNAUTHENTICATED``; a
valid one for another worker, or for a call its kind does not allow, is ``PERMISSION_DENIED``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from hodei.domain import DynamicWorker, WorkerRecord
from hodei.ports import SpentTokens
from hodei.security._claims import Claims, JoinClaims, OperatorClaims, WorkerClaims, check_binding
from hodei.security._refusals import AuthError, AuthFailure, TokenKind
from hodei.security._tokens import DEFAULT_WORKER_CREDENTIAL_TTL, TokenAuthority

__all__ = [
    "AUTHORIZATION",
    "JOIN_ACTIONS",
    "WORKER_ACTIONS",
    "AccessPolicy",
    "CallAuthorizer",
    "Grant",
    "authorization_metadata",
    "bearer_token",
]

AUTHORIZATION = "authorization"
"""The metadata key that carries the credential (gRPC metadata keys are lower case)."""

JOIN_ACTIONS = frozenset({"RegisterWorker", "Connect"})
"""What a join token allows, for its own worker id."""

WORKER_ACTIONS = frozenset({"RegisterWorker", "Connect", "UnregisterWorker"})
"""What a worker credential allows, for its own worker id."""

_ISSUING_ACTIONS = frozenset({"RegisterWorker", "Connect"})  # a worker that (re)registers gets a credential


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first ``authorization`` entry (``Bearer <token>``, the scheme in any case); None when
    there is none. A value in another scheme is returned whole, to be refused as malformed."""
    for key, value in metadata or ():
        if key != AUTHORIZATION:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else text
    return None


def authorization_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents ``token``."""
    return ((AUTHORIZATION, f"Bearer {token}"),)


@dataclass(frozen=True, slots=True)
class Grant:
    """An allowed call. ``caller`` is the operator's name or the worker's id; ``credential`` a worker
    credential to hand back to the caller (empty when it needs none, or keeps its own)."""

    caller: str
    kind: TokenKind
    credential: str = ""

    def __repr__(self) -> str:  # the credential is a secret
        return f"Grant(caller={self.caller!r}, kind={self.kind.value})"


class AccessPolicy:
    """The scheduler's rules (see the module docstring) over one :class:`TokenAuthority`.

    ``worker_credential_ttl`` (seconds, a week by default; None: never) is the life of the worker credentials
    it mints; when set, a worker that registers or connects with its credential gets a fresh one each time, so
    that a connected worker never runs out.
    """

    def __init__(
        self,
        authority: TokenAuthority,
        *,
        worker_credential_ttl: float | None = DEFAULT_WORKER_CREDENTIAL_TTL,
    ) -> None:
        if not authority.can_mint:
            raise ValueError("the scheduler's token key must be able to mint worker credentials")
        if worker_credential_ttl is not None and not worker_credential_ttl > 0:
            raise ValueError(f"worker_credential_ttl must be > 0 seconds, got {worker_credential_ttl!r}")
        self.authority = authority
        self.worker_credential_ttl = worker_credential_ttl

    def authenticate(self, token: str | None) -> Claims:
        """What the caller holds; raises :class:`~hodei.security.Unauthenticated`. Spends nothing."""
        return self.authority.identify(token)

    def authorize(
        self,
        claims: Claims,
        action: str,
        *,
        worker_id: str | None = None,
        pool: str | None = None,
        labels: Mapping[str, str] | None = None,
        incarnation: int = 0,
    ) -> Grant:
        """Allow ``action`` on ``worker_id`` (with that pool and labels) for a caller holding ``claims``, or
        raise :class:`~hodei.security.PermissionDenied` (or :class:`~hodei.security.Unauthenticated` for a
        join token already used). A join token is spent here, and only when the call is allowed."""
        if isinstance(claims, OperatorClaims):
            return Grant(claims.name, TokenKind.OPERATOR)
        kind = TokenKind.JOIN if isinstance(claims, JoinClaims) else TokenKind.WORKER
        allowed = JOIN_ACTIONS if kind is TokenKind.JOIN else WORKER_ACTIONS
        if action not in allowed or worker_id is None:
            raise AuthError.refusal(AuthFailure.WRONG_ACTION, kind=kind, worker_id=worker_id, action=action)
        if isinstance(claims, JoinClaims):
            self.authority.admit_join(
                claims, worker_id=worker_id, pool=pool, labels=labels, incarnation=incarnation
            )
            return Grant(worker_id, kind, self._credential(claims, worker_id))
        if claims.worker_id != worker_id:
            raise AuthError.refusal(AuthFailure.WRONG_WORKER, kind=kind, worker_id=worker_id)
        if action not in _ISSUING_ACTIONS:
            return Grant(worker_id, kind)
        # A registration or a hello: only with what the join token bound, which the credential carries on.
        check_binding(claims, worker_id=worker_id, pool=pool, labels=labels)
        renew = self.worker_credential_ttl is not None
        return Grant(worker_id, kind, self._credential(claims, worker_id) if renew else "")

    def _credential(self, claims: JoinClaims | WorkerClaims, worker_id: str) -> str:
        """A fresh worker credential for ``worker_id`` with the binding of ``claims``."""
        return self.authority.mint_worker_credential(
            worker_id, ttl=self.worker_credential_ttl, pool=claims.pool, labels=claims.labels
        )


class CallAuthorizer:
    """What the servicer asks before serving a call: the caller's claims (read at the door; None when nobody
    authenticated the call) and the request's worker in; a :class:`Grant` out, or the refusal raised.

    ``policy`` says who may call what. A single-use join token is spent by the policy in this process's ledger,
    and then in ``spent`` when the registry's store keeps spent tokens (a token spent on another replica, or
    before a restart, is refused too). ``vet`` raises the registry's refusal of a worker, if any: asked before
    anything is spent, so that a join token is spent only on a registration that passes.
    """

    def __init__(
        self,
        policy: AccessPolicy,
        *,
        spent: SpentTokens | None = None,
        vet: Callable[[WorkerRecord | DynamicWorker], None] | None = None,
    ) -> None:
        self.policy = policy
        self._spent = spent
        self._vet = vet

    async def allow(
        self,
        claims: Claims | None,
        action: str,
        *,
        worker_id: str | None = None,
        worker: WorkerRecord | DynamicWorker | None = None,
    ) -> Grant:
        """Allow ``action`` to ``worker_id``, or the registration of ``worker``; raises :class:`AuthError` (or
        ``vet``'s refusal of ``worker``, or the error of a store of spent tokens that could not be used)."""
        if worker is not None:
            worker_id = worker.worker_id
            if self._vet is not None and claims is not None and not isinstance(claims, OperatorClaims):
                self._vet(worker)
        if claims is None:  # a call that did not pass the door: refused, never let through
            raise AuthError.refusal(AuthFailure.MISSING, kind=None, action=action)
        grant = self.policy.authorize(
            claims,
            action,
            worker_id=worker_id,
            pool=None if worker is None else worker.pool,
            labels=None if worker is None else worker.labels,
            incarnation=0 if worker is None else worker.incarnation,
        )
        if isinstance(claims, JoinClaims) and claims.single_use and worker is not None:
            await self._spend(claims, worker)
        return grant

    async def _spend(self, claims: JoinClaims, worker: WorkerRecord | DynamicWorker) -> None:
        """Spent for this registration (worker id and incarnation): the same one retried (its answer lost, or
        its commit ambiguous) is let through; another is a replay."""
        if self._spent is None:
            return
        until = self.policy.authority.remember_until(claims)
        if not await self._spent.spend(claims.token_id, until, worker.worker_id, worker.incarnation):
            raise AuthError.refusal(AuthFailure.REPLAYED, kind=TokenKind.JOIN, worker_id=worker.worker_id)
