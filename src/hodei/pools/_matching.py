"""Which waiting job gets which available worker: priority first, then first come, first served; each takes its
best fit.

Waiters are served strictly in order — higher priority first, then by arrival. A later waiter may take a worker
only when no earlier waiter still waiting fits it, so a large request is never starved by a stream of small ones
of the same priority: the small ones take only workers the large one cannot use (best fit sends them to the
smallest worker that fits, leaving the large workers for the large request).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hodei.domain import WorkerRecord
from hodei.pools._requirements import Requirements, best_fit

__all__ = ["Waiter", "match", "service_order"]


@dataclass(frozen=True, slots=True)
class Waiter:
    """A job waiting for a worker: its requirements, its priority (higher first) and its place in the queue
    (``seq``: arrival order, unique)."""

    job_id: str
    requirements: Requirements
    priority: int = 0
    seq: int = 0


def service_order(waiter: Waiter) -> tuple[int, int]:
    return (-waiter.priority, waiter.seq)


def match(waiters: Sequence[Waiter], available: Sequence[WorkerRecord]) -> list[tuple[Waiter, WorkerRecord]]:
    """Bindings for as many waiters as the ``available`` workers allow, in service order. Each worker is bound
    at most once; a waiter no free worker fits stays waiting, and nothing it could use goes to a later one."""
    by_pool: dict[str, list[WorkerRecord]] = {}
    for record in available:
        by_pool.setdefault(record.pool, []).append(record)
    bound: list[tuple[Waiter, WorkerRecord]] = []
    for waiter in sorted(waiters, key=service_order):
        pool = waiter.requirements.pool
        pools = [by_pool.get(pool, [])] if pool is not None else list(by_pool.values())
        chosen = best_fit(waiter.requirements, (r for records in pools for r in records))
        if chosen is None:
            continue
        by_pool[chosen.pool].remove(chosen)
        bound.append((waiter, chosen))
    return bound
