"""Terminal views of the resource pools, for ``hodei pools``: the pools as a table or as lines, one pool in
detail, what waits, the pools' events as lines or JSON, and the live view that ``hodei pools watch`` redraws.

What a pool, a worker or a demand holds came from a client or a pools file: it is shown as plain text (never
read as rich markup) with control characters escaped (:func:`hodei._views.plain`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from hodei._views import plain
from hodei.domain import WorkerStatus
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.pools import PoolKind, PoolSpec, PoolStatus, WaitingDemand

__all__ = [
    "PoolsView",
    "demand_table",
    "pool_detail",
    "pool_event_json",
    "pool_event_line",
    "pools_lines",
    "pools_table",
]


class PoolsView:
    """The pools as ``hodei pools watch`` shows them live: the pools last read from the scheduler, and the latest
    events."""

    def __init__(self, scheduler: str, *, recent: int = 8) -> None:
        self.scheduler = scheduler
        self.pools: list[PoolStatus] = []
        self.recent: deque[WorkerEvent] = deque(maxlen=recent)

    def update(self, pools: Sequence[PoolStatus]) -> None:
        self.pools = list(pools)

    def apply(self, event: WorkerEvent) -> None:
        self.recent.append(event)

    def render(self) -> Group:
        title = f"{len(self.pools)} pool(s) on {escape(self.scheduler)}"
        lines = [plain(pool_event_line(e)) for e in self.recent]
        return Group(pools_table(self.pools, title), *lines)


def _bounds(spec: PoolSpec) -> str:
    return f"{spec.min}/{spec.max}"


def _by_status(status: PoolStatus) -> str:
    return ", ".join(f"{n} {s.value}" for s in WorkerStatus if (n := status.workers.get(s, 0))) or "none"


def pools_table(pools: Sequence[PoolStatus], title: str) -> Table:
    """The pools, one a row, with the jobs waiting for each (a shape that several pools fit counts for the first by
    name, as the autoscaler counts it). ``title`` is rich markup (escape what a client gave in it)."""
    table = Table(title=title)
    for column in ("pool", "kind", "provider", "min/max", "size", "by status", "waiting"):
        table.add_column(column, overflow="fold")
    for status in sorted(pools, key=lambda p: p.spec.name):
        spec = status.spec
        table.add_row(
            plain(spec.name),
            plain(spec.kind.value),
            plain(spec.provider.value),
            plain(_bounds(spec)),
            plain(str(status.size)),
            plain(_by_status(status)),
            plain(str(status.waiting)),
        )
    return table


def pools_lines(pools: Sequence[PoolStatus]) -> str:
    """The pools as plain lines (for a pipe), one a pool."""
    return "\n".join(
        f"pool {p.spec.name!a} {p.spec.kind.value} {p.spec.provider.value} {_bounds(p.spec)} size={p.size} "
        f"[{_by_status(p)}] waiting={p.waiting}"
        for p in sorted(pools, key=lambda p: p.spec.name)
    )


def pool_detail(status: PoolStatus) -> Table:
    """One pool's definition, field by field, its workers by status, and its last scale events (newest
    first)."""
    spec, template = status.spec, status.spec.template
    table = Table(title=f"pool {escape(spec.name)}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, str]] = [("kind", spec.kind.value), ("provider", spec.provider.value)]
    rows += [("min", str(spec.min)), ("max", str(spec.max))]
    if spec.kind is PoolKind.DYNAMIC:
        rows += [
            ("warm", str(spec.warm)),
            ("idle_timeout", f"{spec.idle_timeout:g} s"),
            ("scale_up_cooldown", f"{spec.scale_up_cooldown:g} s"),
            ("scale_down_cooldown", f"{spec.scale_down_cooldown:g} s"),
        ]
    rows += [
        ("max_provisioning", str(spec.max_provisioning)),
        ("provision_timeout", f"{spec.provision_timeout:g} s"),
        ("max_use_count", "-" if spec.max_use_count is None else str(spec.max_use_count)),
        (
            "template",
            f"cpu {template.cpu_cores}, memory {template.memory_mb} MB, disk {template.disk_mb} MB, "
            f"gpu {template.gpu_count}",
        ),
        ("labels", ",".join(f"{k}={v}" for k, v in sorted(template.labels.items())) or "-"),
        ("image", template.image or "-"),
        ("size", str(status.size)),
        ("by status", _by_status(status)),
        ("waiting", str(status.waiting)),
    ]
    rows += [
        (
            "scaled" if index == 0 else "",
            f"{event.time.isoformat(timespec='seconds') if event.time else '-'} {event.direction} {event.count} "
            f"({event.reason}), desired {event.desired}",
        )
        for index, event in enumerate(reversed(status.recent))  # the newest first
    ] or [("scaled", "-")]
    for field, value in rows:
        table.add_row(field, plain(value))
    return table


def demand_table(demand: Sequence[WaitingDemand], title: str) -> Table:
    """What waits, one shape a row: how many, the oldest wait, the pools that fit it."""
    table = Table(title=title)
    for column in ("requirements", "waiting", "oldest wait", "pools that fit"):
        table.add_column(column, overflow="fold")
    for shape in demand:
        table.add_row(
            plain(shape.shape),
            plain(str(shape.waiting)),
            plain(f"{shape.oldest_wait:.1f} s"),
            plain(",".join(shape.pools) or "none"),
        )
    return table


# A DEMAND line names at most this many requirement shapes (the most waiting first), then counts the rest: a
# scheduler with thousands of distinct shapes waiting still prints one short line per event.
DEMAND_SHAPES_SHOWN = 5


def _demand_text(demand: Sequence[WaitingDemand]) -> str:
    shown = [
        f"{d.shape} waiting={d.waiting} pools={','.join(d.pools) or '-'}"
        for d in demand[:DEMAND_SHAPES_SHOWN]
    ]
    rest = demand[DEMAND_SHAPES_SHOWN:]
    if rest:
        shown.append(f"and {len(rest)} more shapes, {sum(d.waiting for d in rest)} waiting")
    return "; ".join(shown) or "none"


def pool_event_line(event: WorkerEvent) -> str:
    """One event as one line: time, sequence, kind, then the demand (DEMAND) or the worker, its pool and status."""
    head = f"{event.time.isoformat(timespec='milliseconds')} #{event.sequence} {event.kind.value}"
    if event.kind is WorkerEventKind.DEMAND:
        return f"{head} {_demand_text(event.demand)}"
    if event.kind is WorkerEventKind.POOL_SCALED:
        return f"{head} {event.reason}"
    record = event.record
    pool = record.pool if record is not None else "-"
    status = record.status.value if record is not None else "-"
    return f"{head} {event.worker_id or '-'} pool={pool} {status} {event.reason}".rstrip()


def pool_event_json(event: WorkerEvent) -> str:
    """One event as one JSON object on one line."""
    return json.dumps(
        {
            "time": event.time.isoformat(timespec="milliseconds"),
            "sequence": event.sequence,
            "kind": event.kind.value,
            "worker_id": event.worker_id,
            "pool": event.record.pool if event.record is not None else None,
            "status": event.record.status.value if event.record is not None else None,
            "reason": event.reason,
            "demand": [
                {
                    "requirements": d.shape,
                    "waiting": d.waiting,
                    "oldest_wait": d.oldest_wait,
                    "pools": list(d.pools),
                }
                for d in event.demand
            ],
        }
    )
