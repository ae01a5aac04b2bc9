"""Client text echoed back — in an error, a field violation, a log line or an event — is quoted short.

A client may send megabytes in a worker id or a label; echoing it whole would overflow a status trailer, a log
line or an operator's terminal. :func:`quote_short` shows a bounded, printable prefix and the full length;
:func:`clip` the same without quotes, for structured fields; :func:`cap_violations` keeps the first few
violations and counts the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hodei.domain import FieldViolation

__all__ = [
    "MAX_DRIVER_MESSAGE",
    "MAX_ERROR_BYTES",
    "MAX_QUOTED",
    "MAX_VIOLATIONS",
    "cap_violations",
    "clip",
    "driver_message",
    "fit_violations",
    "quote_short",
]

MAX_QUOTED = 64
"""Characters of client text shown in a message (quoted: at most ten times this, plus the length note)."""

MAX_VIOLATIONS = 20
"""Field violations listed in one error; a last entry counts the others."""

MAX_ERROR_BYTES = 8 * 1024
"""An error as sent (a status with its details, or a batch entry's error) encodes in fewer bytes than this."""


def quote_short(text: str, limit: int = MAX_QUOTED) -> str:
    """``text`` quoted as Python would (ASCII only: control characters and escape sequences are shown escaped,
    never sent to a terminal), cut after ``limit`` characters with the full length: ``'a.a.a'… (6001 chars)``."""
    if len(text) <= limit:
        return ascii(text)
    return f"{text[:limit]!a}… ({len(text)} chars)"


def clip(text: str, limit: int = MAX_QUOTED) -> str:
    """``text`` itself when it is at most ``limit`` characters, else its first ``limit`` and the full length:
    for a structured field (a log field is escaped by its format; an event's reason was validated)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} chars)"


MAX_DRIVER_MESSAGE = 200


def driver_message(error: BaseException) -> str:
    """A database driver's message, bounded for a log line or a store error (it may quote a value a client
    sent)."""
    return clip(str(error), MAX_DRIVER_MESSAGE)


def cap_violations(
    violations: Sequence[FieldViolation], *, limit: int = MAX_VIOLATIONS
) -> list[FieldViolation]:
    """The first ``limit`` violations and, when there were more, one last entry that counts them. Idempotent:
    a list already capped is kept as it is."""
    from hodei.domain import FieldViolation  # the domain quotes with this module: imported when first used

    items = list(violations)
    if len(items) <= limit + 1:
        return items
    return [*items[:limit], FieldViolation("…", f"and {len(items) - limit} more violations not listed")]


def fit_violations(
    violations: Sequence[FieldViolation], *, message: str, limit: int = MAX_ERROR_BYTES, text_limit: int = 256
) -> list[FieldViolation]:
    """Violations that, with ``message``, encode (UTF-8 texts, protobuf framing) in fewer than ``limit``
    bytes: each field and description clipped to ``text_limit`` characters, then as many as fit, and a last
    entry counting the others."""
    from hodei.domain import FieldViolation

    budget = limit - len(message.encode()) - _ERROR_OVERHEAD
    clipped = [FieldViolation(clip(v.field, text_limit), clip(v.description, text_limit)) for v in violations]
    kept: list[FieldViolation] = []
    used = _MORE_BYTES  # room kept for the entry that counts the others
    for violation in clipped:
        used += _encoded_bytes(violation)
        if used > budget:
            more = len(clipped) - len(kept)
            return [*kept, FieldViolation("…", f"and {more} more violations not listed")]
        kept.append(violation)
    return kept


# The error besides its violations: code, message framing, Any type URLs, a RetryInfo.
_ERROR_OVERHEAD = 256
_FRAMING = 16  # protobuf tags and lengths of one violation, generously
_MORE_BYTES = 64 + _FRAMING  # "…" and "and N more violations not listed"


def _encoded_bytes(violation: FieldViolation) -> int:
    return len(violation.field.encode()) + len(violation.description.encode()) + _FRAMING
