"""The ports: the smallest contracts the core needs from the outside world.

- :class:`SchedulerPort` — how the control plane talks to the scheduler (``SchedulerPortClient`` over gRPC);
- :class:`WorkerProvider` — how workers are created and destroyed (process, Docker, ``MockWorkerProvider``);
- :class:`RegistryStore` — where the scheduler's registry keeps its records (memory; SQLite and PostgreSQL);
- :class:`EventRelay` — how scheduler replicas on one store pass each other events and agents' commands;
- :class:`PoolPort` — the scheduler's resource pools: acquiring a worker for a job, demand, pool definitions;
- :class:`BoundJobs` and :class:`PoolDefinitions` — what a registry store keeps of them;
  :class:`CountedTransactions` — a store that counts the transactions its registrations shared.

They are :class:`typing.Protocol` s: fakes and third-party adapters satisfy them without inheriting.
"""

from hodei.domain import UpsertOutcome
from hodei.ports._pools import (
    Acquired,
    AssignmentView,
    PoolPort,
)
from hodei.ports._replicas import (
    EventRelay,
    Leadership,
    Relayed,
    RelayedAck,
    RelayedCommand,
    RelayedEvent,
)
from hodei.ports._scheduler import (
    DrainOutcome,
    RegistrationReceipt,
    SchedulerPort,
    UnregistrationStatus,
    WorkerFilter,
    WorkerPage,
    WorkerProvider,
)
from hodei.ports._stores import (
    BoundJobs,
    CountedTransactions,
    PoolDefinitions,
    RegistryStore,
    SharedLeases,
    SpentTokens,
    TouchedLeases,
)

__all__ = [
    "Acquired",
    "AssignmentView",
    "BoundJobs",
    "CountedTransactions",
    "DrainOutcome",
    "EventRelay",
    "Leadership",
    "PoolDefinitions",
    "PoolPort",
    "RegistrationReceipt",
    "RegistryStore",
    "Relayed",
    "RelayedAck",
    "RelayedCommand",
    "RelayedEvent",
    "SchedulerPort",
    "SharedLeases",
    "SpentTokens",
    "TouchedLeases",
    "UnregistrationStatus",
    "UpsertOutcome",
    "WorkerFilter",
    "WorkerPage",
    "WorkerProvider",
]
