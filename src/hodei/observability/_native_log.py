"""gRPC core's own log lines, routed into the structured log.

gRPC's C core writes its log straight to file descriptor 2, in its own format (``I1205 14:50:14.474276 13433
ssl_transport_security.cc:2563] Handshake failed …``), and reads ``GRPC_VERBOSITY`` once, when ``grpc`` is
imported — before a command can set it. :func:`route_native_log` therefore gives Python a duplicate of the real
standard error and turns descriptor 2 into a pipe: each line that arrives there becomes one structured event,
rate-limited per cause, and a TLS handshake that failed says why in the operator's words.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["NativeLogRouter", "handshake_cause", "route_native_log", "silence_native_log"]

log = logging.getLogger("hodei.grpc")

_LONGEST = 512  # characters kept of a native line: no line, whoever made it, becomes a big event
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}

# What the TLS library says when a handshake fails, and what that means on the scheduler's side.
_HANDSHAKE_CAUSES = (
    (
        ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"),
        "a client spoke plaintext to this TLS port (it needs --tls-ca)",
    ),
    (
        ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"),
        "a client sent no certificate and this port requires one (it needs --tls-cert and --tls-key)",
    ),
    (
        ("CERTIFICATE_VERIFY_FAILED", "UNKNOWN_CA", "BAD_CERTIFICATE"),
        "a client's certificate is not signed by the CA of --tls-client-ca, or not trusted",
    ),
)


def handshake_cause(message: str) -> str:
    """The operator's words for a failed TLS handshake that gRPC core logged as ``message``."""
    for markers, cause in _HANDSHAKE_CAUSES:
        if any(marker in message for marker in markers):
            return cause
    return "the TLS handshake failed"


@dataclass
class NativeLogRouter:
    """Turns native log lines into events: at most one per cause every ``interval`` seconds, the next one
    saying how many were suppressed in between. ``clock`` is injectable for tests."""

    interval: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _last: dict[str, float] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def line(self, text: str) -> None:
        text = text.rstrip("\r\n")[:_LONGEST]
        if not text.strip():
            return
        head, sep, message = text.partition("] ")
        severity = text[0]
        if not sep or severity not in _LEVELS:  # not gRPC's format: whatever native code wrote on stderr
            self._emit("native.stderr", logging.WARNING, "stderr", {"line": text})
            return
        source = head.rsplit(" ", 1)[-1]
        if "Handshake failed" in message:
            cause = handshake_cause(message)
            self._emit("scheduler.tls_handshake_failed", logging.WARNING, cause, {"cause": cause})
            return
        fields: dict[str, object] = {"severity": severity, "source": source, "detail": message}
        self._emit("grpc.core", _LEVELS[severity], source, fields)

    def _emit(self, event: str, level: int, key: str, fields: dict[str, object]) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields = {**fields, "suppressed": suppressed}
        log.log(level, event, extra=fields)


def _python_keeps_stderr() -> int:
    """Point ``sys.stderr`` at a duplicate of the real standard error; descriptor 2 is then free to redirect."""
    sys.stderr.flush()
    real = os.dup(2)
    sys.stderr = open(real, "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    return real


def _owns_descriptor_2() -> bool:
    """Whether Python's standard error is descriptor 2 itself. When something else has taken it over (a test
    harness capturing output, an application embedding hodei), descriptor 2 is not ours to redirect."""
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def silence_native_log() -> None:
    """From now on, Python writes to a duplicate of the real standard error, and what native code writes on
    descriptor 2 is dropped: for short commands, whose errors say themselves what gRPC core would have logged.
    Nothing changes when Python's standard error is not descriptor 2."""
    if not _owns_descriptor_2():
        return
    _python_keeps_stderr()
    nowhere = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nowhere, 2)
    os.close(nowhere)


def route_native_log(router: NativeLogRouter | None = None) -> None:
    """From now on, Python writes to a duplicate of the real standard error (``sys.stderr`` is replaced: set up
    logging after this), and what native code writes on descriptor 2 goes through ``router``, line by line, on a
    daemon thread. For long-running commands only (the scheduler, the agent); call it once. Nothing changes when
    Python's standard error is not descriptor 2."""
    if not _owns_descriptor_2():
        return
    router = router or NativeLogRouter()
    _python_keeps_stderr()
    reading, writing = os.pipe()
    os.dup2(writing, 2)
    os.close(writing)

    def pump() -> None:
        with open(reading, encoding="utf-8", errors="replace") as lines:
            while text := lines.readline(4 * _LONGEST):  # bounded: a line without an end is read in pieces
                router.line(text)

    threading.Thread(target=pump, name="hodei-native-log", daemon=True).start()
