"""What a benchmark scenario measured, the targets it is held to, and how it is shown."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

__all__ = ["ScenarioResult", "Target", "percentile", "results_table"]


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in (0, 1]) of ``values``; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Target:
    """``metric`` of the scenario must be ``at_least`` (or ``at_most``) ``value``."""

    metric: str
    value: float
    at_most: bool = False
    label: str = ""

    def met(self, measured: float) -> bool:
        return measured <= self.value if self.at_most else measured >= self.value

    def describe(self) -> str:
        return self.label or f"{self.metric} {'<=' if self.at_most else '>='} {self.value:g}"


@dataclass
class ScenarioResult:
    name: str
    workers: int
    elapsed: float
    store: str = ""  # the registry store of the scenario's scheduler ("" for the raw baseline)
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    scheduler_cpu_percent: float = 0.0
    scheduler_rss_before: int = 0
    scheduler_rss_after: int = 0
    registered_before: int = 0
    registered_after: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)

    @property
    def workers_per_second(self) -> float:
        return self.workers / self.elapsed if self.elapsed > 0 else 0.0

    def latency(self, fraction: float) -> float:
        return percentile(self.latencies, fraction)

    @property
    def rss_per_1000_workers(self) -> float | None:
        added = self.registered_after - self.registered_before
        if added < 1000:
            return None
        return (self.scheduler_rss_after - self.scheduler_rss_before) / added * 1000

    def metrics(self) -> dict[str, float]:
        values: dict[str, float] = {
            "workers_per_second": self.workers_per_second,
            "p50_ms": self.latency(0.50) * 1000,
            "p95_ms": self.latency(0.95) * 1000,
            "p99_ms": self.latency(0.99) * 1000,
            "max_ms": max(self.latencies, default=0.0) * 1000,
            "errors": float(sum(self.errors.values())),
            "scheduler_cpu_percent": self.scheduler_cpu_percent,
            "scheduler_rss_before_mb": self.scheduler_rss_before / 2**20,
            "scheduler_rss_after_mb": self.scheduler_rss_after / 2**20,
        }
        if (per_thousand := self.rss_per_1000_workers) is not None:
            values["rss_mb_per_1000_workers"] = per_thousand / 2**20
        values.update(self.extra)
        return values

    def verdicts(self) -> list[tuple[Target, float, bool]]:
        metrics = self.metrics()
        return [(t, metrics[t.metric], t.met(metrics[t.metric])) for t in self.targets if t.metric in metrics]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "store": self.store,
            "workers": self.workers,
            "elapsed_s": self.elapsed,
            "errors_by_kind": dict(self.errors),
            **self.metrics(),
            "targets": [
                {"target": t.describe(), "measured": measured, "met": met}
                for t, measured, met in self.verdicts()
            ],
        }


def results_table(results: list[ScenarioResult]) -> Table:
    table = Table(title="hodei registration benchmark")
    for column in (
        "scenario",
        "store",
        "workers",
        "workers/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "errors",
        "sched CPU %",
        "client CPU %",
        "sched RSS MB",
        "MB/1000 workers",
        "per commit",
        "targets",
    ):
        table.add_column(
            column, justify="left" if column in ("scenario", "targets") else "right", overflow="fold"
        )
    for result in results:
        metrics = result.metrics()
        errors = ", ".join(f"{kind}={n}" for kind, n in sorted(result.errors.items())) or "0"
        verdicts = "\n".join(
            f"[{'green' if met else 'red'}]{'met' if met else 'MISSED'}[/]: {target.describe()} "
            f"(measured {measured:,.4g})"
            for target, measured, met in result.verdicts()
        )
        table.add_row(
            result.name,
            result.store,
            f"{result.workers:,}",
            f"{metrics['workers_per_second']:,.0f}",
            f"{metrics['p50_ms']:.2f}",
            f"{metrics['p95_ms']:.2f}",
            f"{metrics['p99_ms']:.2f}",
            f"{metrics['max_ms']:.2f}",
            errors,
            f"{metrics['scheduler_cpu_percent']:.0f}",
            f"{metrics.get('client_cpu_percent', 0.0):.0f}",
            f"{metrics['scheduler_rss_before_mb']:.1f} → {metrics['scheduler_rss_after_mb']:.1f}",
            f"{metrics['rss_mb_per_1000_workers']:.2f}" if "rss_mb_per_1000_workers" in metrics else "",
            f"{shared:.1f}" if (shared := metrics.get("registrations_per_transaction")) else "",
            verdicts,
        )
    return table
