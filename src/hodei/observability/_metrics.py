"""The Prometheus metrics of hodei: one catalogue, so that dashboards and alert rules have one source of names.

Each side of the system owns a class of metrics, registered into a :class:`CollectorRegistry` given to it
(one per process, served on ``/metrics``), or into a private one when none is given (tests, embedded use).
Names follow Prometheus conventions: base units in the name (``_seconds``), ``_total`` on counters (added by
the client library), and labels with a small, fixed set of values: never a worker id.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from hodei.domain import WorkerStatus, WorkerType

__all__ = [
    "DURATION_BUCKETS",
    "LEASE_EXPIRY_REASONS",
    "RECONCILER_ACTIONS",
    "RECONCILER_PASS_RESULTS",
    "REGISTRATION_RESULTS",
    "RETRY_CAUSES",
    "ROLLBACK_REASONS",
    "SCHEDULER_REGISTRATION_RESULTS",
    "STREAM_CONNECT_KINDS",
    "SWEEP_FAILURE_KINDS",
    "UNKNOWN_WORKER_TYPE",
    "AgentMetrics",
    "BulkHistogram",
    "ControlPlaneMetrics",
    "ReadCounter",
    "SchedulerMetrics",
    "process_registry",
]

# From half a millisecond to 30 s: resolves both a 1 ms loopback registration and the 2 s alert threshold.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)
# 0.1 s apart around the default heartbeat interval (5 s), so that its p50 and p99 read to 0.1 s.
HEARTBEAT_LAG_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    4.0,
    *(round(4.5 + step / 10, 1) for step in range(21)),  # 4.5, 4.6, ... 6.5
    7.5,
    10.0,
    15.0,
    30.0,
    60.0,
)

# The values each label takes. Every series they make exists from the start (at 0), so that rates and ratios
# over them are defined before the first event.
REGISTRATION_RESULTS = ("success", "rejected", "exhausted", "cancelled")
RETRY_CAUSES = ("unavailable", "deadline_exceeded", "resource_exhausted", "aborted")  # the transient codes
ROLLBACK_REASONS = ("registration_failed", "cancelled", "error")
SCHEDULER_REGISTRATION_RESULTS = ("created", "updated", "kept", "invalid", "stale", "refused")
UNKNOWN_WORKER_TYPE = "unknown"  # a registration refused before its worker type could be read
LEASE_EXPIRY_REASONS = ("lease_expired", "lost_grace")
ACQUIRE_RESULTS = ("bound", "timeout")
ACQUIRE_WAIT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)
SWEEP_FAILURE_KINDS = ("unavailable", "other")
STREAM_CONNECT_KINDS = ("first", "reconnect")
RECONCILER_ACTIONS = ("orphan_destroyed", "ghost_unregistered")
RECONCILER_PASS_RESULTS = ("ok", "failed")


class BulkHistogram(Histogram):
    """A :class:`Histogram` that also records many observations of one value at once: the workers of a batch
    that were settled by the same call took the same time and the same attempts, and 10,000 of them cost
    one update instead of 10,000."""

    def observe_many(self, amount: float, count: int) -> None:
        """Observe ``amount`` ``count`` times (the same as ``count`` calls of :meth:`observe`)."""
        self._raise_if_not_observable()  # type: ignore[no-untyped-call]
        self._sum.inc(amount * count)
        # The bounds end with +Inf: every amount has a bucket.
        self._buckets[bisect_left(self._upper_bounds, amount)].inc(count)


def process_registry() -> CollectorRegistry:
    """A registry for one process's ``/metrics``: hodei's metrics go in it, beside the process's own
    (``process_*`` CPU, memory and file descriptors, ``python_gc_*``, ``python_info``)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class ControlPlaneMetrics:
    """What the control plane (registration adapter, management service) counts.

    ``hodei_registrations_total{result, worker_type}``: one per registration the adapter finished, by
    ``result``: ``success``, ``rejected`` (a permanent refusal: invalid data, stale incarnation, denied),
    ``exhausted`` (transient failures outlasted the retries), ``cancelled`` (the caller gave up, or the
    scheduler answered ``CANCELLED``). A worker rejected locally, before any call, counts as ``rejected``; the
    duration and attempts histograms observe every registration that made at least one attempt, except those
    its caller cancelled. ``hodei_registration_retries_total{cause}``: the lowercase status code name.
    ``hodei_provisioning_rollbacks_total{reason}``: ``registration_failed``, ``cancelled``, ``error``.
    The reconciler: ``hodei_reconciler_actions_total{action}`` (``orphan_destroyed``: a machine with no
    registration; ``ghost_unregistered``: a registration with no machine), ``hodei_reconciler_passes_total{result}``
    (``ok``, ``failed``: the inventory or the registry could not be read), ``hodei_reconciler_suspects`` (machines
    and registrations without their other half, still within the grace, after the last pass).
    The pool autoscaler: ``hodei_pool_scale_events_total{pool, direction, reason}`` (``direction``: ``up``,
    ``down``; ``reason``: a :class:`~hodei.pools.ScaleReason`, or ``recycle`` and ``lost`` for the workers
    retired because they ran ``max_use_count`` jobs or were lost), ``hodei_pool_provision_failures_total{pool}``,
    ``hodei_pool_desired_workers{pool}`` (the desired size at the last tick).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registrations = Counter(
            "hodei_registrations",
            "Registrations the control plane finished, by result and worker type.",
            ["result", "worker_type"],
            registry=r,
        )
        self.registration_duration = BulkHistogram(
            "hodei_registration_duration_seconds",
            "Time from the first attempt of a registration to its outcome, retries included.",
            ["worker_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.registration_attempts = BulkHistogram(
            "hodei_registration_attempts",
            "Attempts one registration took (1 when the first attempt settled it).",
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "hodei_registration_retries",
            "Registration attempts that were retried, by the status code that caused the retry.",
            ["cause"],
            registry=r,
        )
        self.batch_size = Histogram(
            "hodei_registration_batch_size",
            "Workers per register_workers_batch call.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.provisioning_rollbacks = Counter(
            "hodei_provisioning_rollbacks",
            "Provisioned workers destroyed again because their registration did not succeed, by reason.",
            ["reason"],
            registry=r,
        )
        self.reconciler_actions = Counter(
            "hodei_reconciler_actions",
            "Repairs the reconciler made: orphan machines destroyed, ghost registrations removed.",
            ["action"],
            registry=r,
        )
        self.reconciler_passes = Counter(
            "hodei_reconciler_passes",
            "Reconciler passes, by result (failed: the inventory or the registry could not be read).",
            ["result"],
            registry=r,
        )
        self.reconciler_suspects = Gauge(
            "hodei_reconciler_suspects",
            "Machines without a registration and registrations without a machine, still within the grace.",
            registry=r,
        )
        self.pool_scale_events = Counter(
            "hodei_pool_scale_events",
            "Workers the pool autoscaler provisioned (up) or retired (down), by pool and reason.",
            ["pool", "direction", "reason"],
            registry=r,
        )
        self.pool_provision_failures = Counter(
            "hodei_pool_provision_failures",
            "Provisions of a pool's workers that failed (the pool backs off), by pool.",
            ["pool"],
            registry=r,
        )
        self.pool_desired_workers = Gauge(
            "hodei_pool_desired_workers",
            "The size the pool autoscaler wants for each pool, at its last tick.",
            ["pool"],
            registry=r,
        )
        for action in RECONCILER_ACTIONS:
            self.reconciler_actions.labels(action)
        for result in RECONCILER_PASS_RESULTS:
            self.reconciler_passes.labels(result)
        for result in REGISTRATION_RESULTS:
            for worker_type in WorkerType:
                self.registrations.labels(result, worker_type.value)
        for worker_type in WorkerType:
            self.registration_duration.labels(worker_type.value)
        for cause in RETRY_CAUSES:
            self.retries.labels(cause)
        for reason in ROLLBACK_REASONS:
            self.provisioning_rollbacks.labels(reason)


class ReadCounter(Collector):
    """A counter kept elsewhere (by a store), read at each scrape: the sum of what each reader :meth:`add` ed
    returns; no series at all while none was added (a store that does not count is not a store that wrote
    nothing)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._readers: list[Callable[[], float]] = []
        registry.register(self)

    def add(self, read: Callable[[], float]) -> None:
        self._readers.append(read)

    def collect(self) -> Iterator[CounterMetricFamily]:
        if self._readers:
            yield CounterMetricFamily(
                self._name, self._documentation, value=sum(read() for read in self._readers)
            )

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation)


class SchedulerMetrics:
    """What the scheduler counts.

    ``hodei_scheduler_registrations_total{result, worker_type}`` by ``result``: ``created``, ``updated``,
    ``kept``, ``invalid``, ``stale``, ``refused`` (by the registry's veto), counted once per worker
    (batch entries and agents' hellos included); ``worker_type`` is ``unknown`` for a registration refused
    before its type could be read. Calls refused whole by the registration bound count in
    ``hodei_admission_rejections_total{method}`` (the short RPC name) instead. ``hodei_workers{status}`` is
    read from the registry on every liveness tick of every replica (0 for the statuses nobody has).
    ``hodei_lease_expiries_total{reason}``: ``lease_expired``, ``lost_grace``;
    ``hodei_stream_connects_total{kind}``: ``first``, ``reconnect``;
    ``hodei_liveness_sweep_failures_total{error}``: ``unavailable``, ``other``.
    Agents' hellos refused beyond the hello bound count in ``hodei_hello_rejections_total``;
    ``hodei_hellos_in_flight`` and ``hodei_hellos_waiting`` say how many are worked on and told to wait now.
    Resource pools: ``hodei_acquires_waiting``, ``hodei_acquire_wait_seconds{result}`` (``bound``,
    ``timeout``), ``hodei_assignments_ended_total{outcome}``; per declared pool ``hodei_pool_workers{pool,
    status}``, ``hodei_pool_max_workers{pool}`` and ``hodei_pool_waiting{pool}``, set from the registry about
    once a second (a pool no longer declared loses its series).
    ``hodei_store_registration_transactions_total`` is read from the registry store at each scrape: the
    transactions that committed registrations (group commit: the registrations counted above, over these, is
    how many shared one); a store that does not count them has no such series.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registrations = Counter(
            "hodei_scheduler_registrations",
            "Registrations the scheduler answered, by result and worker type.",
            ["result", "worker_type"],
            registry=r,
        )
        self.workers = Gauge("hodei_workers", "Registered workers, by status.", ["status"], registry=r)
        self.heartbeat_lag = Histogram(
            "hodei_heartbeat_lag_seconds",
            "Time between two consecutive heartbeats of one agent.",
            buckets=HEARTBEAT_LAG_BUCKETS,
            registry=r,
        )
        self.lease_expiries = Counter(
            "hodei_lease_expiries",
            "Workers that went LOST (reason lease_expired) and LOST workers removed (reason lost_grace).",
            ["reason"],
            registry=r,
        )
        self.stream_connects = Counter(
            "hodei_stream_connects",
            "Agent streams opened, by kind: first (a worker new to the registry) or reconnect.",
            ["kind"],
            registry=r,
        )
        self.streams_open = Gauge("hodei_streams_open", "Agent streams open on this scheduler.", registry=r)
        self.admission_rejections = Counter(
            "hodei_admission_rejections",
            "Calls refused with RESOURCE_EXHAUSTED by admission control, by method.",
            ["method"],
            registry=r,
        )
        self.hello_rejections = Counter(
            "hodei_hello_rejections",
            "Agents' hellos refused with RESOURCE_EXHAUSTED and an advised retry delay: the scheduler was "
            "already working on its bound of hellos (--max-hellos-in-flight).",
            registry=r,
        )
        self.hellos_in_flight = Gauge(
            "hodei_hellos_in_flight", "Agents' hellos the scheduler is working on now.", registry=r
        )
        self.hellos_waiting = Gauge(
            "hodei_hellos_waiting",
            "Agents refused a hello whose advised retry delay has not yet run out.",
            registry=r,
        )
        self.liveness_sweep_failures = Counter(
            "hodei_liveness_sweep_failures",
            "Liveness ticks that failed (and were tried again at the next), by error: unavailable (the store "
            "could not be used) or other.",
            ["error"],
            registry=r,
        )
        self.lease_leader = Gauge(
            "hodei_lease_leader", "1 while this scheduler runs lease expiry for its registry.", registry=r
        )
        self.acquires_waiting = Gauge(
            "hodei_acquires_waiting",
            "Acquires waiting for a worker that fits, now (read at each scrape).",
            registry=r,
        )
        self.acquire_wait = Histogram(
            "hodei_acquire_wait_seconds",
            "How long an acquire waited, by result: bound (a worker was bound to its job) or timeout.",
            ["result"],
            buckets=ACQUIRE_WAIT_BUCKETS,
            registry=r,
        )
        self.assignments_ended = Counter(
            "hodei_assignments_ended",
            "Assignments that ended, by outcome (succeeded, failed, timed_out, cancelled, worker_lost, abandoned).",
            ["outcome"],
            registry=r,
        )
        self.pool_workers = Gauge(
            "hodei_pool_workers",
            "Workers of each declared pool, by status (read from the registry about once a second).",
            ["pool", "status"],
            registry=r,
        )
        self.pool_max = Gauge(
            "hodei_pool_max_workers", "Each declared pool's max (a static pool's size).", ["pool"], registry=r
        )
        self.pool_waiting = Gauge(
            "hodei_pool_waiting",
            "Acquires waiting that each pool's template fits (first pool by name).",
            ["pool"],
            registry=r,
        )
        self.store_transactions = ReadCounter(
            "hodei_store_registration_transactions",
            "Transactions the registry store committed registrations in (read from the store at each scrape); "
            "with group commit, several registrations share one.",
            r,
        )
        for result in ACQUIRE_RESULTS:
            self.acquire_wait.labels(result)
        for outcome in ("succeeded", "failed", "timed_out", "cancelled", "worker_lost", "abandoned"):
            self.assignments_ended.labels(outcome)
        for result in SCHEDULER_REGISTRATION_RESULTS:
            for worker_type in (*(t.value for t in WorkerType), UNKNOWN_WORKER_TYPE):
                self.registrations.labels(result, worker_type)
        for status in WorkerStatus:
            self.workers.labels(status.value)
        for reason in LEASE_EXPIRY_REASONS:
            self.lease_expiries.labels(reason)
        for kind in STREAM_CONNECT_KINDS:
            self.stream_connects.labels(kind)
        for error in SWEEP_FAILURE_KINDS:
            self.liveness_sweep_failures.labels(error)


class AgentMetrics:
    """What a worker agent counts. ``hodei_agent_stream_connects_total{result}``: ``ok``, or the lowercase
    status code name of the failure (``unavailable``, ``invalid_argument``, ...)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stream_connects = Counter(
            "hodei_agent_stream_connects",
            "Connect streams the agent opened, by result: ok, or the status code that refused it.",
            ["result"],
            registry=r,
        )
        self.reconnects = Counter(
            "hodei_agent_reconnects", "Times the agent's stream broke and it connected again.", registry=r
        )
        self.heartbeats = Counter("hodei_agent_heartbeats", "Heartbeats the agent sent.", registry=r)
        self.stream_connects.labels("ok")
