"""RegistrationMeter: the registration adapter's metrics, with every labelled series it updates looked up once.

A batch settles many workers per call; the meter takes them by the group (same result, worker type, attempts
and duration), so that metering a batch of 10,000 costs a few updates, not 10,000.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter

from hodei.domain import WorkerType
from hodei.errors import ErrorCode, MaxRetriesExceeded, RegistrationError
from hodei.observability._metrics import REGISTRATION_RESULTS, ControlPlaneMetrics

__all__ = ["RegistrationMeter", "result_of"]


def result_of(failure: RegistrationError) -> str:
    """The ``result`` label of a registration that failed."""
    if isinstance(failure, MaxRetriesExceeded):
        return "exhausted"
    if failure.code is ErrorCode.CANCELLED:
        return "cancelled"
    return "rejected"


class RegistrationMeter:
    def __init__(self, metrics: ControlPlaneMetrics) -> None:
        self.metrics = metrics
        self._results = {
            (result, worker_type): metrics.registrations.labels(result, worker_type.value)
            for result in REGISTRATION_RESULTS
            for worker_type in WorkerType
        }
        self._durations = {t: metrics.registration_duration.labels(t.value) for t in WorkerType}
        self._retries: dict[ErrorCode, Counter] = {}

    def settled(
        self, result: str, worker_type: WorkerType, *, attempts: int, seconds: float, count: int = 1
    ) -> None:
        """``count`` registrations of ``worker_type`` ended with ``result`` after ``attempts`` attempts (0: it
        was never sent) and ``seconds`` since the first."""
        self._results[result, worker_type].inc(count)
        if attempts:
            self._durations[worker_type].observe_many(seconds, count)
            self.metrics.registration_attempts.observe_many(attempts, count)

    def settled_groups(
        self, groups: Mapping[tuple[str, WorkerType], int], *, attempts: int, seconds: float
    ) -> None:
        """Registrations settled by the same call: ``{(result, worker_type): count}``."""
        for (result, worker_type), count in groups.items():
            self.settled(result, worker_type, attempts=attempts, seconds=seconds, count=count)

    def cancelled(self, worker_type: WorkerType, count: int = 1) -> None:
        """The caller gave up on ``count`` registrations before they were settled."""
        self._results["cancelled", worker_type].inc(count)

    def retried(self, code: ErrorCode, count: int = 1) -> None:
        """``count`` registration attempts failed with ``code`` and will be tried again."""
        if (series := self._retries.get(code)) is None:
            series = self._retries[code] = self.metrics.retries.labels(code.name.lower())
        series.inc(count)

    def batch(self, size: int) -> None:
        self.metrics.batch_size.observe(size)
