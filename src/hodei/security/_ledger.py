"""The replay guard of single-use join tokens: a port, and an adapter in this process's memory."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from hodei.domain import utcnow

__all__ = ["JtiLedger", "MemoryJtiLedger"]


class JtiLedger(Protocol):
    """The replay guard's port: remembers the ids of used single-use tokens, and by which registration (worker
    id and incarnation), until they expire."""

    def claim(self, jti: str, expires_at: datetime, worker_id: str, incarnation: int) -> bool:
        """Record ``jti`` as used by ``worker_id``'s ``incarnation``; False when it was used by another
        registration. Claiming it again for the same one is True: a registration retried after its answer was
        lost is not a replay (a restarted worker, with a new incarnation, is)."""
        ...


class MemoryJtiLedger:
    """A :class:`JtiLedger` in this process's memory; an id is forgotten once its ``expires_at`` has passed."""

    def __init__(self, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._clock = clock
        self._used: dict[str, tuple[str, int]] = {}  # jti -> the registration (worker id, incarnation)
        self._by_expiry: list[tuple[datetime, str]] = []
        self._lock = threading.Lock()

    def claim(self, jti: str, expires_at: datetime, worker_id: str, incarnation: int) -> bool:
        with self._lock:
            self._forget_expired()
            if jti in self._used:
                return self._used[jti] == (worker_id, incarnation)
            self._used[jti] = (worker_id, incarnation)
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
