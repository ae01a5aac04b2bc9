"""WorkerManagementConfig."""

from __future__ import annotations

from dataclasses import dataclass

from hodei._settings import check_settings

__all__ = ["WorkerManagementConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerManagementConfig:
    """What the management service does around provisioning.

    ``destroy_on_registration_failure``: a worker whose registration failed is destroyed (default), so that
    nothing runs unknown to the scheduler; set it to False to keep it for inspection.
    ``provision_concurrency`` bounds the provider calls in flight in :meth:`provision_workers`;
    ``stop_grace`` is the time a worker gets to stop before it is killed; ``drain_timeout`` how long
    :meth:`decommission_worker` waits for a connected worker to finish its work.
    """

    worker_id_prefix: str = "worker"
    destroy_on_registration_failure: bool = True
    provision_concurrency: int = 16
    stop_grace: float = 10.0
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        check_settings(
            self,
            {
                "provision_concurrency": (">= 1", self.provision_concurrency >= 1),
                "drain_timeout": (">= 0", self.drain_timeout >= 0),
                "stop_grace": (">= 0", self.stop_grace >= 0),
            },
        )
