"""Reconciler: keeps the provider's inventory and the scheduler's registry telling the same story.

Each pass lists the machines the provider owns and the registrations in the reconciler's scope, and compares.
Both are only those of its own control plane: they carry its owner id (the reserved label ``hodei.owner``,
:mod:`hodei._ownership`), which the management service and the providers set on every worker they provision. A
hand-started agent, a static worker or another control plane's worker is never an orphan nor a ghost of it.

- an **orphan** is a machine (container, process) with no registration: a control plane that died between
  provisioning and registering, a container started by hand with hodei's labels, an agent that never got in.
  Once it has stayed an orphan for ``grace`` it is destroyed, and the scheduler's watchers are told
  (``ORPHAN_REMOVED``);
- a **ghost** is a registration with no machine behind it: a container removed by hand, a host that vanished.
  Once it has stayed a ghost for ``grace`` it is unregistered, with the reason in the ``UNREGISTERED`` event.

The grace is counted from the first pass that saw the mismatch, so a worker half-way through provisioning
(machine created, registration not yet acknowledged) or decommissioning is never mistaken for either; the
workers the management service is working on are left out altogether. Every action is logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Set
from dataclasses import dataclass, field

from hodei._ownership import OWNER_LABEL, owner_of
from hodei._settings import check_settings
from hodei.errors import HodeiError
from hodei.observability._metrics import ControlPlaneMetrics
from hodei.ports import SchedulerPort, WorkerFilter, WorkerProvider

__all__ = ["ReconcileReport", "Reconciler", "ReconcilerConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcilerConfig:
    """``interval``: seconds between passes; ``grace``: how long a mismatch may last before it is repaired.

    ``scope``: the registrations that are the provider's business (default: those of the provider's
    ``worker_type``); registrations outside it are never ghosts. Whatever the scope, only workers of ``owner``
    (default: the provider's owner id) are in it. ``call_timeout`` bounds each call to the scheduler.
    """

    interval: float = 30.0
    grace: float = 60.0
    scope: WorkerFilter | None = None
    page_size: int = 500
    call_timeout: float = 10.0
    owner: str | None = None

    def __post_init__(self) -> None:
        check_settings(
            self,
            {
                "interval": ("> 0", self.interval > 0),
                "grace": (">= 0", self.grace >= 0),
                "page_size": ("between 1 and 1000", 1 <= self.page_size <= 1000),
                "call_timeout": ("> 0", self.call_timeout > 0),
            },
        )


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one pass did: ids repaired, ids still within the grace, and the repairs that failed."""

    orphans_destroyed: list[str] = field(default_factory=list)
    ghosts_unregistered: list[str] = field(default_factory=list)
    suspects: list[str] = field(default_factory=list)
    failures: dict[str, HodeiError] = field(default_factory=dict)


def _scope_of(provider: WorkerProvider, scope: WorkerFilter | None, owner: str) -> WorkerFilter:
    """The registrations in scope: ``scope`` (default: the provider's worker type), of ``owner`` only."""
    if scope is None:
        worker_type = getattr(provider, "worker_type", None)
        if worker_type is None:
            raise ValueError(
                f"{type(provider).__name__} has no worker_type: give ReconcilerConfig.scope, the registrations "
                "that are this provider's"
            )
        scope = WorkerFilter(worker_type=worker_type)
    claimed = scope.labels.get(OWNER_LABEL, owner)
    if claimed != owner:
        raise ValueError(f"the scope names owner {claimed!r}, but this reconciler's owner is {owner!r}")
    return WorkerFilter(
        statuses=scope.statuses, worker_type=scope.worker_type, labels={**scope.labels, OWNER_LABEL: owner}
    )


class Reconciler:
    """``Reconciler(provider, port, config=ReconcilerConfig(grace=60))``; ``await reconcile_once()`` or ``run()``.

    ``busy()`` returns the ids somebody is provisioning or decommissioning right now: they are left alone.
    """

    def __init__(
        self,
        provider: WorkerProvider,
        port: SchedulerPort,
        *,
        config: ReconcilerConfig | None = None,
        metrics: ControlPlaneMetrics | None = None,
        busy: Callable[[], Set[str]] = frozenset,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.port = port
        self.config = config or ReconcilerConfig()
        self.owner = self.config.owner or owner_of(provider)
        self.scope = _scope_of(provider, self.config.scope, self.owner)
        self.metrics = metrics or ControlPlaneMetrics()
        self._busy = busy
        self._clock = clock
        self._orphan_since: dict[str, float] = {}
        self._ghost_since: dict[str, float] = {}

    async def _registered(self) -> set[str]:
        ids: set[str] = set()
        token = ""
        while True:
            page = await self.port.list_workers(
                self.scope,
                page_size=self.config.page_size,
                page_token=token,
                timeout=self.config.call_timeout,
            )
            ids.update(record.worker_id for record in page.workers)
            token = page.next_page_token
            if not token:
                return ids

    @staticmethod
    def _track(since: dict[str, float], current: set[str], now: float) -> None:
        """Keep the first-seen time of the ids that are still suspect; start the clock of new ones."""
        for worker_id in list(since):
            if worker_id not in current:
                del since[worker_id]
        for worker_id in current:
            since.setdefault(worker_id, now)

    async def reconcile_once(self) -> ReconcileReport:
        """One comparison, and the repairs that are due. Raises the error if a listing failed (nothing done)."""
        try:
            machines = {
                worker.worker_id
                for worker in await self.provider.list_workers()
                if worker.config.labels.get(OWNER_LABEL) == self.owner
            }
            registered = await self._registered()
        except HodeiError:
            self.metrics.reconciler_passes.labels("failed").inc()
            raise
        busy = self._busy()
        now = self._clock()
        self._track(self._orphan_since, machines - registered - busy, now)
        self._track(self._ghost_since, registered - machines - busy, now)
        report = ReconcileReport()
        due = self.config.grace
        for worker_id, since in sorted(self._orphan_since.items()):
            if now - since >= due:
                await self._destroy_orphan(worker_id, now - since, report)
        for worker_id, since in sorted(self._ghost_since.items()):
            if now - since >= due:
                await self._unregister_ghost(worker_id, now - since, report)
        report.suspects.extend(
            sorted((self._orphan_since.keys() | self._ghost_since.keys()) - report.failures.keys())
        )
        self.metrics.reconciler_suspects.set(len(report.suspects))
        self.metrics.reconciler_passes.labels("ok").inc()
        return report

    async def _destroy_orphan(self, worker_id: str, age: float, report: ReconcileReport) -> None:
        reason = f"reconciler: the provider's machine had no registration for {age:.1f}s (orphan); destroyed"
        try:
            await self.provider.destroy(worker_id)
        except HodeiError as error:
            report.failures[worker_id] = error
            log.error("reconciler.orphan_destroy_failed", extra={"worker_id": worker_id, "error": str(error)})
            return
        del self._orphan_since[worker_id]
        report.orphans_destroyed.append(worker_id)
        self.metrics.reconciler_actions.labels("orphan_destroyed").inc()
        log.warning("reconciler.orphan_destroyed", extra={"worker_id": worker_id, "unregistered_for_s": age})
        try:
            await self.port.report_orphan_removed(worker_id, reason=reason, timeout=self.config.call_timeout)
        except HodeiError as error:  # the machine is gone all the same; only the announcement is lost
            log.warning(
                "reconciler.orphan_report_failed", extra={"worker_id": worker_id, "error": str(error)}
            )

    async def _unregister_ghost(self, worker_id: str, age: float, report: ReconcileReport) -> None:
        reason = f"reconciler: no machine behind this registration for {age:.1f}s (ghost)"
        try:
            await self.port.unregister_worker(worker_id, reason=reason, timeout=self.config.call_timeout)
        except HodeiError as error:
            report.failures[worker_id] = error
            log.error(
                "reconciler.ghost_unregister_failed", extra={"worker_id": worker_id, "error": str(error)}
            )
            return
        del self._ghost_since[worker_id]
        report.ghosts_unregistered.append(worker_id)
        self.metrics.reconciler_actions.labels("ghost_unregistered").inc()
        log.warning(
            "reconciler.ghost_unregistered", extra={"worker_id": worker_id, "machine_missing_for_s": age}
        )

    async def run(self) -> None:
        """Reconcile every ``interval`` until cancelled; a failed pass is logged and the next one comes."""
        while True:
            try:
                report = await self.reconcile_once()
            except HodeiError as error:
                log.error("reconciler.pass_failed", extra={"error": str(error)})
            else:
                if report.orphans_destroyed or report.ghosts_unregistered or report.failures:
                    log.info(
                        "reconciler.pass_finished",
                        extra={
                            "orphans_destroyed": len(report.orphans_destroyed),
                            "ghosts_unregistered": len(report.ghosts_unregistered),
                            "failures": len(report.failures),
                            "suspects": len(report.suspects),
                        },
                    )
            await asyncio.sleep(self.config.interval)
