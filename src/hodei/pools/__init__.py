"""Resource pools, the part that decides: what a job needs and which worker fits it best, who waits in which
order, what a pool is (the pool file), and how many workers a pool should have now.

Pure: no I/O, no clock of its own, no gRPC, SQL or Docker. The scheduler binds workers to jobs with
:func:`match`; the control plane's autoscaler acts on :func:`plan_scale`, fed each tick with counts derived
from the registry and the provider.
"""

from hodei.pools._autoscale import IdleWorker, PoolObservation, ScalePlan, ScaleReason, plan_scale
from hodei.pools._file import PoolFileError, load_pools, parse_pools
from hodei.pools._matching import Waiter, match
from hodei.pools._requirements import Requirements, best_fit
from hodei.pools._spec import PoolKind, PoolSpec, WorkerTemplate
from hodei.pools._status import PoolStatus, ScaleEvent, WaitingDemand, waiting_by_pool

__all__ = [
    "IdleWorker",
    "PoolFileError",
    "PoolKind",
    "PoolObservation",
    "PoolSpec",
    "PoolStatus",
    "Requirements",
    "ScaleEvent",
    "ScalePlan",
    "ScaleReason",
    "Waiter",
    "WaitingDemand",
    "WorkerTemplate",
    "best_fit",
    "load_pools",
    "match",
    "parse_pools",
    "plan_scale",
    "waiting_by_pool",
]
