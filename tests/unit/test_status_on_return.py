"""What status a worker gets back when it is heard again — at a hello, at the first heartbeat after it was found
LOST, or when another replica found it LOST while it streamed here: one decision, for all three."""

from __future__ import annotations

import pytest

from hodei.domain import WorkerStatus
from hodei.scheduler._sessions import status_on_return


@pytest.mark.parametrize(
    ("draining", "running_jobs", "expected"),
    [
        (False, False, WorkerStatus.AVAILABLE),
        (False, True, WorkerStatus.BUSY),
        (True, False, WorkerStatus.DRAINING),
        (True, True, WorkerStatus.DRAINING),  # a worker told to drain stays draining, jobs or not
    ],
)
def test_a_returning_worker_is_draining_if_told_to_drain_else_busy_with_jobs_else_available(
    draining: bool, running_jobs: bool, expected: WorkerStatus
) -> None:
    assert status_on_return(draining=draining, running_jobs=running_jobs) is expected
