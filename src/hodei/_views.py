"""Terminal views shared by the CLI and the demo.

What a worker or an event holds came from a client: it is shown as plain text (never read as rich markup, so
``[/]`` is a label like any other) with control characters escaped (``\\x1b``), so that no escape sequence in
a label reaches the operator's terminal.
"""

from __future__ import annotations

import re
from collections import deque

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hodei.domain import WorkerRecord, WorkerStatus
from hodei.lifecycle import WorkerEvent, WorkerEventKind

__all__ = ["PoolView", "plain", "workers_table"]

_COLORS = {
    WorkerStatus.AVAILABLE: "green",
    WorkerStatus.BUSY: "cyan",
    WorkerStatus.DRAINING: "yellow",
    WorkerStatus.LOST: "red",
}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def plain(text: str, style: str = "") -> Text:
    """``text`` as it is (no markup), its control characters shown escaped."""
    return Text(_CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text), style=style)


def _agent(record: WorkerRecord) -> str:
    """How the worker's agent is doing: connected (here, or to another replica), and drained, or gone quiet,
    or none at all."""
    if record.lease_ttl is None:
        return "none"
    if record.connected:
        state = "connected"
    elif record.connected_via:
        state = f"connected via {record.connected_via}"  # shown as plain text (plain()), never as markup
    else:
        state = "disconnected"
    return f"{state}, drained" if record.drained else state


def workers_table(records: list[WorkerRecord], title: str) -> Table:
    """The workers, one a row. ``title`` is rich markup (escape what a client gave in it)."""
    table = Table(title=title)
    for column in ("worker id", "status", "type", "cpu", "memory MB", "pool", "labels", "agent"):
        # Fold rather than cut, so that no field is ever shortened.
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(
            plain(record.worker_id),
            plain(record.status.value, _COLORS.get(record.status, "white")),
            plain(record.worker_type.value),
            plain(str(record.capabilities.cpu_cores)),
            plain(str(record.capabilities.memory_mb)),
            plain(record.pool),
            plain(",".join(f"{k}={v}" for k, v in sorted(record.labels.items()))),
            plain(_agent(record)),
        )
    return table


class PoolView:
    """The pool as a stream of events builds it: apply events, render a table and the latest events."""

    def __init__(self, *, recent: int = 8) -> None:
        self.workers: dict[str, WorkerRecord] = {}
        self.recent: deque[WorkerEvent] = deque(maxlen=recent)

    def apply(self, event: WorkerEvent) -> None:
        if event.kind in (WorkerEventKind.UNREGISTERED, WorkerEventKind.EXPIRED):
            self.workers.pop(event.worker_id, None)
        elif event.record is not None:
            self.workers[event.worker_id] = event.record
        if event.kind is not WorkerEventKind.SNAPSHOT:
            self.recent.append(event)

    def render(self, scheduler: str) -> Group:
        records = [self.workers[k] for k in sorted(self.workers)]
        counts = ", ".join(
            f"{n} {status.value}"
            for status in WorkerStatus
            if (n := sum(r.status is status for r in records))
        )
        title = f"{len(records)} worker(s) on {escape(scheduler)}: {counts or 'none'}"
        table = workers_table(records, title)
        lines = [
            plain(
                f"#{e.sequence} {e.time:%H:%M:%S} {e.kind.value:<14} {e.worker_id or '-':<24} {e.reason}",
                style="red" if e.kind in (WorkerEventKind.LOST, WorkerEventKind.EXPIRY_SLOWED) else "",
            )
            for e in self.recent
        ]
        return Group(table, *lines)
