"""What a job needs of a worker, and which worker fits it best.

A :class:`Requirements` names a pool, or resources and labels, or both. A worker fits when it is in that pool
(if one is named), has at least the resources asked for, and carries every label asked for with the same
value. Of the workers that fit, the *best fit* is the smallest — fewest GPUs, then cores, then memory, then disk
— so that a small job never takes the large worker a large job will need.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hodei.domain import (
    MAX_CPU_CORES,
    MAX_DISK_MB,
    MAX_GPU_COUNT,
    MAX_MEMORY_MB,
    DynamicWorkerConfig,
    FieldViolation,
    WorkerCapabilities,
    WorkerRecord,
)

__all__ = ["Requirements", "best_fit"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirements:
    """``Requirements(pool="builders")``, ``Requirements(cpu_cores=4, labels={"os": "linux"})``: zero asks for
    nothing; ``pool=None`` accepts any pool."""

    pool: str | None = None
    cpu_cores: int = 0
    memory_mb: int = 0
    disk_mb: int = 0
    gpu_count: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def __hash__(self) -> int:
        return hash((self.pool, self.capabilities, frozenset(self.labels.items())))

    @property
    def capabilities(self) -> WorkerCapabilities:
        return WorkerCapabilities(self.cpu_cores, self.memory_mb, self.disk_mb, self.gpu_count)

    def violations(self) -> list[FieldViolation]:
        """Every invalid field, named ``requirements.*``: resources within the contract's ranges (zero allowed),
        labels and the pool by the same rules as a worker's."""
        found = [
            FieldViolation(f"requirements.{name}", f"must be between 0 and {high}, got {value}")
            for name, value, high in (
                ("cpu_cores", self.cpu_cores, MAX_CPU_CORES),
                ("memory_mb", self.memory_mb, MAX_MEMORY_MB),
                ("disk_mb", self.disk_mb, MAX_DISK_MB),
                ("gpu_count", self.gpu_count, MAX_GPU_COUNT),
            )
            if not 0 <= value <= high
        ]
        # The labels and the pool follow a worker's rules: the config's own check is the one rule.
        shape = DynamicWorkerConfig(labels=self.labels, pool=self.pool or "default").violations()
        found += [
            FieldViolation(v.field.replace("metadata.", "requirements.", 1), v.description)
            for v in shape
            if v.field.startswith(("metadata.labels", "metadata.pool"))
        ]
        return found

    def admits(self, capabilities: WorkerCapabilities, labels: Mapping[str, str], pool: str) -> bool:
        """Whether a worker of this shape (a registered worker or a pool's template) fits."""
        return (
            (self.pool is None or self.pool == pool)
            and capabilities.cpu_cores >= self.cpu_cores
            and capabilities.memory_mb >= self.memory_mb
            and capabilities.disk_mb >= self.disk_mb
            and capabilities.gpu_count >= self.gpu_count
            and all(labels.get(key) == value for key, value in self.labels.items())
        )

    def fits(self, record: WorkerRecord) -> bool:
        return self.admits(record.capabilities, record.labels, record.pool)

    @property
    def shape(self) -> str:
        """One line naming what is asked, the key waiting demand is counted by: ``pool=builders cpu=4 …``."""
        parts = [f"pool={self.pool}"] if self.pool is not None else []
        parts += [
            f"{name}={value}"
            for name, value in (
                ("cpu", self.cpu_cores),
                ("memory_mb", self.memory_mb),
                ("disk_mb", self.disk_mb),
                ("gpu", self.gpu_count),
            )
            if value
        ]
        parts += [f"{key}={value}" for key, value in sorted(self.labels.items())]
        return " ".join(parts) or "any"


def _size(record: WorkerRecord) -> tuple[int, int, int, int, str]:
    c = record.capabilities
    return (c.gpu_count, c.cpu_cores, c.memory_mb, c.disk_mb, record.worker_id)


def best_fit(requirements: Requirements, candidates: Iterable[WorkerRecord]) -> WorkerRecord | None:
    """The smallest worker of ``candidates`` that fits (ties broken by worker id, so the choice is stable), or
    ``None``."""
    return min((r for r in candidates if requirements.fits(r)), key=_size, default=None)
