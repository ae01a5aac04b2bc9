"""A list of field violations sent back to a client is bounded: :func:`cap_violations` keeps the first few and
counts the rest; :func:`fit_violations` keeps as many as fit in an error's byte budget, each text clipped."""

from __future__ import annotations

from collections.abc import Sequence

from hodei._quoting import clip
from hodei.domain import FieldViolation

__all__ = ["MAX_ERROR_BYTES", "MAX_VIOLATIONS", "cap_violations", "fit_violations"]

MAX_VIOLATIONS = 20
"""Field violations listed in one error; a last entry counts the others."""

MAX_ERROR_BYTES = 8 * 1024
"""An error as sent (a status with its details, or a batch entry's error) encodes in fewer bytes than this."""


def cap_violations(
    violations: Sequence[FieldViolation], *, limit: int = MAX_VIOLATIONS
) -> list[FieldViolation]:
    """The first ``limit`` violations and, when there were more, one last entry that counts them. Idempotent:
    a list already capped is kept as it is."""
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
