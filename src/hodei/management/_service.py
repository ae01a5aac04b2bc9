"""WorkerManagementService: provisions workers, registers them, and takes them out of service again.

The invariant it keeps: a worker it provisioned either ends registered with the scheduler, or is destroyed and
reported to the caller with the reason (unless the configuration says to keep it) — never left running unknown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from opentelemetry import trace

from hodei._ownership import owned, owner_of
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerStatus, validate_worker_id
from hodei.errors import (
    HodeiError,
    InvalidWorkerData,
    MaxRetriesExceeded,
    ProviderError,
    ProvisioningError,
    RegistrationError,
)
from hodei.management._config import WorkerManagementConfig
from hodei.management._forgetting import Unregistrations
from hodei.management._reconciler import Reconciler, ReconcilerConfig
from hodei.observability import _tracing as tracing
from hodei.observability._metrics import ControlPlaneMetrics
from hodei.ports import UnregistrationStatus, WorkerProvider
from hodei.registration._adapter import BatchRegistrationResult, WorkerRegistrationAdapter

__all__ = ["DecommissionResult", "ProvisionResult", "WorkerManagementService"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    """One worker of :meth:`WorkerManagementService.provision_workers`: ``worker`` or ``error``."""

    worker_id: str
    worker: DynamicWorker | None = None
    error: HodeiError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class DecommissionResult:
    """``drained``: the worker's agent finished its work before it was unregistered; ``kept``: asked to
    decommission it only if idle, it was busy, and nothing was done."""

    worker_id: str
    was_registered: bool
    drained: bool = False
    kept: bool = False


def _rollback_reason(error: BaseException) -> str:
    return "cancelled" if isinstance(error, asyncio.CancelledError) else "error"


class WorkerManagementService:
    """``WorkerManagementService(provider, registration=adapter, config=WorkerManagementConfig())``.

    Without a registration adapter it only provisions and destroys. ``metrics`` counts the provisioned workers
    destroyed again because their registration did not succeed (default: the adapter's, else a private one).
    Every worker it provisions carries its ``owner`` (the provider's owner id) in the reserved ``hodei.owner``
    label, which is what its reconciler acts on.

    ``async with service:`` or :meth:`aclose` closes what the service owns and nothing else: the provider,
    the adapter and the adapter's port client stay the caller's, unless ``owns_port`` hands the port client
    over (as :func:`hodei._bootstrap.build_control_plane` does for the client it makes from addresses).
    """

    def __init__(
        self,
        provider: WorkerProvider,
        *,
        registration: WorkerRegistrationAdapter | None = None,
        config: WorkerManagementConfig | None = None,
        metrics: ControlPlaneMetrics | None = None,
        owns_port: bool = False,
    ) -> None:
        if owns_port and registration is None:
            raise ValueError("owns_port needs a registration adapter, whose port client the service closes")
        self.provider = provider
        self.registration = registration
        self.config = config or WorkerManagementConfig()
        if metrics is None:
            metrics = registration.metrics if registration is not None else ControlPlaneMetrics()
        self.metrics = metrics
        self.owner = owner_of(provider)
        self._in_flight: set[str] = set()  # ids being provisioned or decommissioned: not the reconciler's
        self._unregistrations = Unregistrations()  # rollbacks' unregistrations still retrying
        self._owns_port = owns_port

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the rollbacks' unregistrations still retrying in the background, and close the adapter's port
        client if the service owns it (``owns_port``); nothing else. Idempotent."""
        await self._unregistrations.aclose()
        if self._owns_port and self.registration is not None:
            await self.registration.port.close()

    @classmethod
    def new_with_registration(
        cls,
        provider: WorkerProvider,
        registration: WorkerRegistrationAdapter,
        config: WorkerManagementConfig | None = None,
    ) -> WorkerManagementService:
        return cls(provider, registration=registration, config=config)

    def new_worker_id(self) -> str:
        return f"{self.config.worker_id_prefix}-{uuid.uuid4().hex[:12]}"

    @staticmethod
    def _check(config: DynamicWorkerConfig) -> None:
        violations = config.verdict
        if violations:
            raise InvalidWorkerData(
                "invalid worker configuration; nothing provisioned", violations=violations
            )

    async def _destroy(self, worker_id: str) -> ProviderError | None:
        try:
            await self.provider.destroy(worker_id)
        except ProviderError as error:
            return error
        return None

    async def _forget(self, worker_id: str, incarnation: int | None = None) -> None:
        """Unregister a worker whose registration was given up (see :class:`Unregistrations`)."""
        if self.registration is not None:
            await self._unregistrations.forget(self.registration, worker_id, incarnation)

    async def _retire(self, worker_id: str, incarnation: int | None = None) -> ProviderError | None:
        await self._forget(worker_id, incarnation)
        return await self._destroy(worker_id)

    async def _give_up(self, worker_id: str, cause: HodeiError, incarnation: int) -> ProvisioningError:
        """Destroy a worker whose registration failed (unless configured to keep it); the error to raise."""
        fields = {"worker_id": worker_id, "error": str(cause)}
        if isinstance(cause, RegistrationError):
            fields["code"] = cause.code.name
        if not self.config.destroy_on_registration_failure:
            log.warning("provisioning.kept_unregistered", extra=fields)
            return ProvisioningError(worker_id, cause, cleaned_up=False)
        if isinstance(cause, MaxRetriesExceeded):
            await self._forget(worker_id, incarnation)
        cleanup_error = await self._destroy(worker_id)
        if cleanup_error is None:
            log.warning("provisioning.rolled_back", extra=fields)
        else:
            log.error("provisioning.rollback_failed", extra=fields | {"cleanup_error": str(cleanup_error)})
        return ProvisioningError(
            worker_id, cause, cleaned_up=cleanup_error is None, cleanup_error=cleanup_error
        )

    async def provision_worker(
        self, config: DynamicWorkerConfig, *, worker_id: str | None = None
    ) -> DynamicWorker:
        """Provision one worker and register it; it comes back with status ``REGISTERED``.

        Raises :class:`~hodei.errors.InvalidWorkerData` for a bad config (nothing provisioned),
        :class:`~hodei.errors.ProviderError` when provisioning fails, and
        :class:`~hodei.errors.ProvisioningError` when registration fails (the worker is destroyed first).
        """
        with tracing.span("provision_worker", {tracing.WORKER_TYPE: config.worker_type.value}):
            return await self._provision_worker(config, worker_id)

    @contextlib.contextmanager
    def _working_on(self, worker_ids: Sequence[str]) -> Iterator[None]:
        """While the block runs, the reconciler leaves these workers alone."""
        self._in_flight.update(worker_ids)
        try:
            yield
        finally:
            self._in_flight.difference_update(worker_ids)

    async def _provision_worker(self, config: DynamicWorkerConfig, worker_id: str | None) -> DynamicWorker:
        self._check(config)
        if worker_id is not None and (violations := validate_worker_id(worker_id)):
            raise InvalidWorkerData(
                "invalid worker id; nothing provisioned", worker_id=worker_id, violations=violations
            )
        worker_id = worker_id or self.new_worker_id()
        trace.get_current_span().set_attribute(tracing.WORKER_ID, worker_id)
        with self._working_on([worker_id]):
            return await self._provision_and_register(worker_id, config)

    async def _provision_and_register(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
        worker = await self.provider.provision(worker_id, owned(config, self.owner))
        log.info(
            "worker.provisioned", extra={"worker_id": worker_id, "worker_type": worker.worker_type.value}
        )
        if self.registration is None:
            return worker
        try:
            await self.registration.register_worker(worker)
        except RegistrationError as error:
            self._count_rollbacks("registration_failed", 1)
            raise await self._give_up(worker_id, error, worker.incarnation) from error
        except BaseException as error:
            # Cancelled half-way, or a failure that is not a registration error: the worker must not outlive
            # the caller's interest in it.
            if self.config.destroy_on_registration_failure:
                self._count_rollbacks(_rollback_reason(error), 1)
                log.warning("provisioning.abandoned", extra={"worker_id": worker_id, "error": repr(error)})
                await asyncio.shield(self._retire(worker_id, worker.incarnation))
            raise
        return worker.with_status(WorkerStatus.REGISTERED)

    async def provision_workers(self, count: int, config: DynamicWorkerConfig) -> list[ProvisionResult]:
        """Provision ``count`` workers (bounded concurrency) and register them with the batch call.

        One result per worker; a worker that could not be registered is destroyed, as in
        :meth:`provision_worker`.
        """
        attributes = {tracing.WORKERS: count, tracing.WORKER_TYPE: config.worker_type.value}
        with tracing.span("provision_workers", attributes):
            results = await self._provision_workers(count, config)
        failed = [r.worker_id for r in results if r.error is not None]
        log.log(
            logging.WARNING if failed else logging.INFO,
            "provisioning.batch_finished",
            extra={"workers": count, "provisioned": count - len(failed), "failed": len(failed)},
        )
        return results

    async def _provision_workers(self, count: int, config: DynamicWorkerConfig) -> list[ProvisionResult]:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._check(config)
        ids = [self.new_worker_id() for _ in range(count)]
        with self._working_on(ids):
            return await self._provision_batch(ids, config)

    async def _provision_batch(self, ids: list[str], config: DynamicWorkerConfig) -> list[ProvisionResult]:
        # One owned config for the whole batch: the adapter checks it (and the client encodes it) once.
        config = owned(config, self.owner)
        provisioned: dict[str, DynamicWorker] = {}
        failures: dict[str, HodeiError] = {}
        refused: list[tuple[str, RegistrationError]] = []
        incarnations: dict[str, int] = {}  # of the workers sent to be registered: what their rollback fences
        gate = asyncio.Semaphore(self.config.provision_concurrency)

        async def provision_one(worker_id: str) -> None:
            async with gate:
                try:
                    provisioned[worker_id] = await self.provider.provision(worker_id, config)
                except ProviderError as error:
                    failures[worker_id] = error

        try:
            async with asyncio.TaskGroup() as group:
                for worker_id in ids:
                    group.create_task(provision_one(worker_id))
            if self.registration is not None and provisioned:
                ready = [provisioned[i] for i in ids if i in provisioned]
                incarnations.update((w.worker_id, w.incarnation) for w in ready)
                for result in await self.registration.register_workers_batch(ready):
                    if result.error is not None:
                        refused.append((result.worker_id, result.error))
                        del provisioned[result.worker_id]
                    else:
                        provisioned[result.worker_id] = provisioned[result.worker_id].with_status(
                            WorkerStatus.REGISTERED
                        )
                self._count_rollbacks("registration_failed", len(refused))
                # The refused are given up together: destroying one must not wait for another's grace.
                given_up = await asyncio.gather(
                    *(self._give_up(i, error, incarnations[i]) for i, error in refused)
                )
                failures.update((i, error) for (i, _), error in zip(refused, given_up, strict=True))
        except BaseException as error:
            # Cancelled (or failed) half-way: the caller will never hear of these workers, so none may stay.
            if self.config.destroy_on_registration_failure:
                # The refused were counted when refused; those the provider failed were never provisioned.
                counted = {i for i, _ in refused}
                self._count_rollbacks(
                    _rollback_reason(error),
                    sum(i not in counted and not isinstance(failures.get(i), ProviderError) for i in ids),
                )
                # Every id: a provision cancelled half-way may have left something behind too.
                cleanup = asyncio.gather(*(self._retire(i, incarnations.get(i)) for i in ids))
                await asyncio.shield(cleanup)
            raise
        return [ProvisionResult(i, provisioned.get(i), failures.get(i)) for i in ids]

    def _count_rollbacks(self, reason: str, count: int) -> None:
        """``count`` provisioned workers are destroyed again (unless configured to keep them), for ``reason``."""
        if self.config.destroy_on_registration_failure:
            self.metrics.provisioning_rollbacks.labels(reason).inc(count)

    async def register_static_workers(
        self, workers: Sequence[DynamicWorker]
    ) -> list[BatchRegistrationResult]:
        """Register machines that exist already (no provisioning), in one batch."""
        if self.registration is None:
            raise RuntimeError("static workers need a registration adapter")
        return await self.registration.register_workers_batch(workers)

    async def decommission_worker(self, worker_id: str, *, only_if_idle: bool = False) -> DecommissionResult:
        """Drain the worker (waiting up to ``drain_timeout`` for a connected agent to finish its work),
        unregister it, then stop and destroy it — also when the scheduler had already forgotten it.
        ``only_if_idle``: only a worker the scheduler holds AVAILABLE and bound to no job, checked as it is
        drained (a job bound to it meanwhile keeps it: ``kept``, nothing done).

        If draining or unregistration fails, the worker is left running and registered (consistent) and the
        :class:`~hodei.errors.RegistrationError` is raised, so the caller can try again.
        """
        with (
            tracing.span("decommission_worker", {tracing.WORKER_ID: worker_id}),
            self._working_on([worker_id]),
        ):
            return await self._decommission_worker(worker_id, only_if_idle)

    async def _decommission_worker(self, worker_id: str, only_if_idle: bool) -> DecommissionResult:
        was_registered = drained = False
        if self.registration is not None:
            drain = await self.registration.drain_worker(
                worker_id, deadline=self.config.drain_timeout, only_if_available=only_if_idle
            )
            if drain.busy:
                log.info("decommission.kept", extra={"worker_id": worker_id, "reason": "busy"})
                return DecommissionResult(worker_id, was_registered=True, kept=True)
            drained = drain.drained
            log.info(
                "decommission.drained",
                extra={
                    "worker_id": worker_id,
                    "registered": drain.registered,
                    "delivered": drain.delivered,
                    "drained": drain.drained,
                },
            )
            status = await self.registration.unregister_worker(worker_id)
            was_registered = status is UnregistrationStatus.SUCCESS
            log.info("decommission.unregistered", extra={"worker_id": worker_id, "status": status.value})
        await self.provider.stop(worker_id, grace=self.config.stop_grace)
        await self.provider.destroy(worker_id)
        log.info("decommission.destroyed", extra={"worker_id": worker_id})
        return DecommissionResult(worker_id, was_registered, drained)

    async def list_workers(self) -> list[DynamicWorker]:
        """The workers the provider owns."""
        return await self.provider.list_workers()

    @property
    def in_flight(self) -> frozenset[str]:
        """The ids this service is provisioning or decommissioning right now."""
        return frozenset(self._in_flight)

    def reconciler(self, config: ReconcilerConfig | None = None) -> Reconciler:
        """A reconciler of this service's provider against the scheduler's registry; it leaves alone the
        workers this service is provisioning or decommissioning."""
        if self.registration is None:
            raise RuntimeError(
                "the reconciler needs a registration adapter (to read the scheduler's registry)"
            )
        return Reconciler(
            self.provider,
            self.registration.port,
            config=config,
            metrics=self.metrics,
            busy=lambda: self._in_flight,
        )

    @contextlib.asynccontextmanager
    async def reconciling(self, config: ReconcilerConfig | None = None) -> AsyncIterator[Reconciler]:
        """``async with service.reconciling(): ...`` runs a reconciler's passes for the block."""
        reconciler = self.reconciler(config)
        task = asyncio.create_task(reconciler.run(), name="hodei-reconciler")
        try:
            yield reconciler
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
