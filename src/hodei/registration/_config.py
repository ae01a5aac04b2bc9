"""RegistrationConfig and the backoff policy it implies."""

from __future__ import annotations

from dataclasses import dataclass

from hodei._settings import check_settings

__all__ = ["RegistrationConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationConfig:
    """How hard the registration adapter tries. Durations are seconds.

    ``max_retries=3`` means up to 4 attempts. The delay before retry *n* (1-based) is
    ``min(max_backoff, base_backoff * backoff_multiplier ** (n - 1))`` plus up to ``jitter`` of that on top —
    jitter spreads retries out without ever shortening the delay: 100 ms, 200 ms, 400 ms, … by default. When the
    scheduler advises a delay (``RESOURCE_EXHAUSTED`` with ``RetryInfo``), that delay is used instead.
    ``registration_timeout`` is the deadline of each attempt. A batch is sent ``batch_size`` workers per call,
    with at most ``batch_concurrency`` calls in flight.
    """

    max_retries: int = 3
    base_backoff: float = 0.1
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.1
    registration_timeout: float = 5.0
    batch_size: int = 250
    batch_concurrency: int = 8
    validate_before_send: bool = True

    def __post_init__(self) -> None:
        check_settings(
            self,
            {
                "max_retries": (">= 0", self.max_retries >= 0),
                "base_backoff": (">= 0", self.base_backoff >= 0),
                "max_backoff": (">= base_backoff", self.max_backoff >= self.base_backoff),
                "backoff_multiplier": (">= 1", self.backoff_multiplier >= 1),
                "jitter": ("between 0 and 1", 0 <= self.jitter <= 1),
                "registration_timeout": ("> 0", self.registration_timeout > 0),
                "batch_size": ("between 1 and 1000", 1 <= self.batch_size <= 1000),
                "batch_concurrency": (">= 1", self.batch_concurrency >= 1),
            },
        )

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def backoff(self, retry: int, random_fraction: float = 0.0) -> float:
        """The delay before retry number ``retry`` (1 for the first retry); ``random_fraction`` in [0, 1)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        if not 0.0 <= random_fraction < 1.0:
            raise ValueError(f"random_fraction must be in [0, 1), got {random_fraction}")
        nominal = min(self.max_backoff, self.base_backoff * self.backoff_multiplier ** (retry - 1))
        return nominal * (1.0 + self.jitter * random_fraction)
