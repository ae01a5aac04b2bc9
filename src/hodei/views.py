"""Terminal views shared by the CLI and the demo."""

from __future__ import annotations

from rich.table import Table

from hodei.domain import WorkerRecord, WorkerStatus

__all__ = ["workers_table"]


def workers_table(records: list[WorkerRecord], title: str) -> Table:
    table = Table(title=title)
    for column in ("worker id", "status", "type", "cpu", "memory MB", "pool", "labels"):
        table.add_column(column, no_wrap=column == "worker id")
    for record in records:
        color = "green" if record.status is WorkerStatus.AVAILABLE else "yellow"
        table.add_row(
            record.worker_id,
            f"[{color}]{record.status.value}[/{color}]",
            record.worker_type.value,
            str(record.capabilities.cpu_cores),
            str(record.capabilities.memory_mb),
            record.pool,
            ",".join(f"{k}={v}" for k, v in sorted(record.labels.items())),
        )
    return table
