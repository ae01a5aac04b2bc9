"""What a refused credential is: its kind, the reason, and the error to answer with.

::

    HodeiError
    └── AuthError              a credential was refused; ``reason`` says why, ``code`` how to answer
        ├── Unauthenticated        UNAUTHENTICATED: none, malformed, forged, expired, another kind, replayed
        └── PermissionDenied       PERMISSION_DENIED: valid, but bound to another worker, pool or labels, or
                                   of a kind that does not allow the action

No message ever contains the token: it is made of the kind, the claimed worker id and the action alone.
"""

from __future__ import annotations

import enum

from hodei._quoting import quote_short
from hodei.errors import ErrorCode, HodeiError

__all__ = ["AuthError", "AuthFailure", "PermissionDenied", "TokenKind", "Unauthenticated"]


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
    WRONG_ACTION = "wrong_action"


# The only texts a refusal shows: made of the kind, the claimed worker id and the action, never of the token.
_MESSAGES = {
    AuthFailure.MISSING: "no {noun}",
    AuthFailure.MALFORMED: "malformed {noun}",
    AuthFailure.BAD_SIGNATURE: "{noun} is not signed by a trusted key",
    AuthFailure.EXPIRED: "{noun} expired",
    AuthFailure.NOT_YET_VALID: "{noun} issued in the future",
    AuthFailure.WRONG_KIND: "not a {noun}",
    AuthFailure.REPLAYED: "{noun} already used",
    AuthFailure.WRONG_WORKER: "{noun} is for another worker than {worker_id}",
    AuthFailure.WRONG_POOL: "{noun} is bound to another pool",
    AuthFailure.WRONG_LABELS: "{noun} is bound to other labels",
    AuthFailure.WRONG_ACTION: "a {noun} does not allow {action}",
}
_DENIALS = frozenset(
    {AuthFailure.WRONG_WORKER, AuthFailure.WRONG_POOL, AuthFailure.WRONG_LABELS, AuthFailure.WRONG_ACTION}
)
_ANY_KIND = "credential"  # the noun of a token whose kind is not known (none, or unreadable)


class AuthError(HodeiError):
    """A credential was refused. ``kind`` is what was expected (None: any kind), ``worker_id`` the worker the
    caller claimed, ``action`` what it asked to do.

    :meth:`refusal` picks the subclass for a ``reason``; the message is made from ``reason``, ``kind``,
    ``worker_id`` and ``action`` alone.
    """

    code = ErrorCode.UNAUTHENTICATED

    def __init__(
        self,
        reason: AuthFailure,
        *,
        kind: TokenKind | None,
        worker_id: str | None = None,
        action: str | None = None,
    ) -> None:
        self.reason = reason
        self.kind = kind
        self.worker_id = worker_id
        self.action = action
        noun = _ANY_KIND if kind is None else kind.noun
        quoted = None if worker_id is None else quote_short(worker_id)  # the caller's text: quoted short
        self.message = _MESSAGES[reason].format(noun=noun, worker_id=quoted, action=action)
        super().__init__(self.message)

    @staticmethod
    def refusal(
        reason: AuthFailure,
        *,
        kind: TokenKind | None,
        worker_id: str | None = None,
        action: str | None = None,
    ) -> AuthError:
        """:class:`PermissionDenied` for a credential bound to another worker, pool or labels, or one whose
        kind does not allow the action; else :class:`Unauthenticated`."""
        error_type = PermissionDenied if reason in _DENIALS else Unauthenticated
        return error_type(reason, kind=kind, worker_id=worker_id, action=action)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason.value}, message={self.message!r})"


class Unauthenticated(AuthError):
    """No credential, or one that does not prove anything: answer ``UNAUTHENTICATED``."""


class PermissionDenied(AuthError):
    """A valid credential for someone else: answer ``PERMISSION_DENIED``."""

    code = ErrorCode.PERMISSION_DENIED
