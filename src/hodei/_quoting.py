"""Client text echoed back — in an error, a field violation, a log line or an event — is quoted short.

A client may send megabytes in a worker id or a label; echoing it whole would overflow a status trailer, a log
line or an operator's terminal. :func:`quote_short` shows a bounded, printable prefix and the full length;
:func:`clip` the same without quotes, for structured fields. (Lists of field violations are bounded by
:mod:`hodei._violations`.)
"""

from __future__ import annotations

__all__ = [
    "MAX_DRIVER_MESSAGE",
    "MAX_QUOTED",
    "clip",
    "driver_message",
    "quote_short",
]

MAX_QUOTED = 64
"""Characters of client text shown in a message (quoted: at most ten times this, plus the length note)."""


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
