"""A clock the test moves: monotonic seconds, and the wall-clock moment they stand for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


class FakeClock:
    """Time that passes only when the test says so.

    ``now`` is the monotonic reading in seconds; the wall clock reads ``epoch + now``. Hand the scheduler
    ``clock=fake.wall, monotonic=fake.monotonic``; a part that takes a float clock (a reconciler, an admission
    control) takes the clock itself, and a token authority takes ``fake.wall``. ``advance(seconds)`` moves both.
    """

    def __init__(self, now: float = 0.0, *, epoch: datetime = EPOCH) -> None:
        self.now = now
        self.epoch = epoch

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self.epoch + timedelta(seconds=self.now)

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (never back) and return the new reading."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back, got {seconds!r}")
        self.now += seconds
        return self.now
