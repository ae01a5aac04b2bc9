"""Secrets masked in log events, in time linear in the text (logs carry client text: it must not stall the loop).

Values of keys that look like secrets (:data:`SECRET_KEY`) become ``"[redacted]"``; inside every string,
passwords in URLs (``scheme://user:PASSWORD@host``), ``password=…``, ``"token": "…"``, ``Bearer …`` and JSON
Web Tokens are masked (:func:`redact_text`).

Every pattern starts only where its run of characters starts (a negative lookbehind on the run's own class)
and takes runs possessively or inside atomic lookarounds, so that each character is scanned a bounded number of
times whatever the text: ``"a." * 3000 + "="`` costs what 6 KB of prose costs, not 2 seconds. And what is
scanned is bounded: a string longer than :data:`MAX_LOGGED_TEXT` characters (:data:`MAX_LOGGED_TRACEBACK` for
a traceback) is cut first, at a whitespace so that no part of a secret is left unmasked, and says how long it
was.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping

from structlog.typing import EventDict, WrappedLogger

__all__ = ["MAX_LOGGED_TEXT", "MAX_LOGGED_TRACEBACK", "REDACTED", "SECRET_KEY", "redact", "redact_text"]

REDACTED = "[redacted]"
MAX_LOGGED_TEXT = 4096
"""The longest string a log event keeps (client text is quoted far shorter where it is logged)."""
MAX_LOGGED_TRACEBACK = 16384
"""The longest traceback (``exception``, ``stack``) a log event keeps: its end, where the error is."""
_TRACEBACK_KEYS = frozenset({"exception", "stack"})
_WHITESPACE = re.compile(r"\s")
_NOTE = 32  # room for the note that says how long the text was

# A key whose value is a secret, whatever the value looks like.
SECRET_KEY = re.compile(
    r"pass(?:word|wd|phrase)|pwd|secret|token|authori[sz]ation|^auth$|credential|dsn|api[_-]?key"
    r"|private[_-]?key|cookie",
    re.IGNORECASE,
)
_SECRET_WORD = r"(?:pass(?:word|wd|phrase)|pwd|secret|token|api[_-]?key|credential|private[_-]?key)"
# A name run ([\w.-]) that holds a secret word, taken whole from where the run starts: the lookahead finds the
# word (lookarounds are atomic), the run is then taken possessively.
_SECRET_NAME = rf"(?<![\w.-])(?=[\w.-]*?{_SECRET_WORD})[\w.-]++"
# scheme://USERINFO@host: the userinfo runs to the last @ of the whole token, so that an unescaped @ or / in a
# password is masked too (a path holding an @ is masked with it: too much rather than too little). A scheme is a
# run of scheme characters holding a letter.
_URL = re.compile(
    r"(?P<scheme>(?<![a-zA-Z0-9+.\-])(?=[0-9+.\-]*+[a-zA-Z])[a-zA-Z0-9+.\-]++://)(?P<rest>[^\s'\"<>]++)"
)
# password=VALUE (query strings, libpq keyword DSNs), and "password": "VALUE" (JSON, Python reprs).
_ASSIGNED = re.compile(
    rf"(?P<name>{_SECRET_NAME}\s*+=\s*+)(?P<value>\"[^\"]*+\"|'[^']*+'|[^\s&;,'\"]++)", re.IGNORECASE
)
_QUOTED = re.compile(
    rf"(?P<name>(?P<q>[\"'])(?=[\w.-]*?{_SECRET_WORD})[\w.-]++(?P=q)\s*+:\s*+)"
    r"(?P<value>\"[^\"]*+\"|'[^']*+'|[^\s,}\]]++)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<name>\b(?:bearer|basic)\s++)[A-Za-z0-9._~+/=\-]{6,}+", re.IGNORECASE)
# A JSON Web Token (hodei's join tokens and credentials are): a JSON header, "eyJ…", then two more parts. Taken
# from the start of its run of base64url characters (the part before the first "eyJ" at a word boundary is
# kept), so that a run holding many "eyJ" is scanned once.
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])(?>(?P<before>[A-Za-z0-9_-]*?)(?=\beyJ[A-Za-z0-9_-]))"
    r"[A-Za-z0-9_-]++\.[A-Za-z0-9_-]++\.[A-Za-z0-9_-]*+"
)


def _mask_url(match: re.Match[str]) -> str:
    rest = match["rest"]
    at = rest.rfind("@")
    if at <= 0:
        return match[0]
    user, colon, _ = rest[:at].partition(":")
    if not colon:
        return match[0]  # a user name alone
    return f"{match['scheme']}{user}:{REDACTED}{rest[at:]}"


def _mask_value(match: re.Match[str]) -> str:
    return f"{match['name']}{REDACTED}"


def redact_text(text: str) -> str:
    """``text`` with the secrets it holds masked: URL passwords, ``secret=value``, ``"token": "…"``, bearer
    credentials, JSON Web Tokens (hodei's join tokens and credentials). Linear in ``len(text)``."""
    if "://" in text:
        text = _URL.sub(_mask_url, text)
    if "=" in text:
        text = _ASSIGNED.sub(_mask_value, text)
    if ":" in text and ('"' in text or "'" in text):
        text = _QUOTED.sub(_mask_value, text)
    if " " in text:
        text = _BEARER.sub(_mask_value, text)
    if "eyJ" in text:
        text = _JWT.sub(lambda m: f"{m['before']}{REDACTED}", text)
    return text


def _head(text: str, limit: int) -> str:
    """The first ``limit`` characters or fewer, ending at a whitespace (a token cut in two could be the part
    of a secret that no pattern recognises any more), and the length of the whole."""
    head = text[: limit - _NOTE]
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return f"{head[: max(cut, 0)]}… ({len(text)} chars)"


def _tail(text: str, limit: int) -> str:
    """The last ``limit`` characters or fewer, starting after a whitespace (see :func:`_head`)."""
    tail = text[-(limit - _NOTE) :]
    found = _WHITESPACE.search(tail)
    return f"({len(text)} chars) …{tail[found.start() :] if found else ''}"


def _bounded(text: str, limit: int, cut: Callable[[str, int], str]) -> str:
    """``text`` cut to ``limit`` characters (by ``cut``), redacted, and cut again if masks made it longer."""
    if len(text) > limit:
        text = cut(text, limit)
    text = redact_text(text)
    return cut(text, limit) if len(text) > limit else text


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return _bounded(value, MAX_LOGGED_TEXT, _head)
    if isinstance(value, Mapping):
        return {
            key: REDACTED if _is_secret_key(key, item) else _redact_value(item) for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))  # rendered as text anyway: mask what its text holds


@functools.lru_cache(maxsize=1024)
def _secret_name(key: str) -> bool:
    return SECRET_KEY.search(key) is not None


def _is_secret_key(key: object, value: object) -> bool:
    return isinstance(key, str) and value not in (None, "") and _secret_name(key)


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The structlog processor: secret-looking keys' values replaced, secrets inside every string masked."""
    for key, value in event_dict.items():
        if _is_secret_key(key, value):
            event_dict[key] = REDACTED
        elif key in _TRACEBACK_KEYS and isinstance(value, str) and len(value) > MAX_LOGGED_TRACEBACK:
            event_dict[key] = _bounded(value, MAX_LOGGED_TRACEBACK, _tail)
        else:
            event_dict[key] = _redact_value(value)
    return event_dict
