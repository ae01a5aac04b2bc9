"""LeaseTable: when each agent-managed worker's lease runs out, on the scheduler's monotonic clock."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["LeaseTable"]


class LeaseTable:
    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def renew(self, worker_id: str, ttl: float, now: float) -> None:
        self._expiry[worker_id] = now + ttl

    def drop(self, worker_id: str) -> None:
        self._expiry.pop(worker_id, None)

    def expires_at(self, worker_id: str) -> float | None:
        return self._expiry.get(worker_id)

    def expired(self, now: float) -> list[str]:
        """Workers whose lease ran out, the longest-expired first."""
        due = [(expiry, worker_id) for worker_id, expiry in self._expiry.items() if expiry <= now]
        return [worker_id for _, worker_id in sorted(due)]

    def extend_all(self, seconds: float) -> None:
        for worker_id in self._expiry:
            self._expiry[worker_id] += seconds

    def clear(self) -> None:
        self._expiry.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self._expiry)

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._expiry
