"""What a pool is: a name, a provider, a worker template, and how many workers it keeps.

A **static** pool keeps ``size`` workers, provisioned in parallel at start and replaced when one is lost. A
**dynamic** pool keeps between ``min`` and ``max``: as many as are busy, plus the jobs waiting for it, plus
``warm`` idle ones ready, and lets an idle worker go after ``idle_timeout`` (down to ``min``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hodei.domain import DynamicWorkerConfig, FieldViolation, WorkerType

__all__ = ["MAX_POOL_SIZE", "PoolKind", "PoolSpec", "WorkerTemplate"]

MAX_POOL_SIZE = 100_000
"""The largest ``size`` or ``max`` a pool may declare."""

MAX_DURATION = 7 * 24 * 3600.0
"""The longest duration (a timeout, a cooldown) a pool may declare, in seconds: a week."""


class PoolKind(enum.StrEnum):
    STATIC = "static"
    DYNAMIC = "dynamic"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerTemplate:
    """The shape of every worker of a pool."""

    cpu_cores: int = 2
    memory_mb: int = 4096
    disk_mb: int = 0
    gpu_count: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def config(self, pool: str, worker_type: WorkerType) -> DynamicWorkerConfig:
        """The :class:`DynamicWorkerConfig` the control plane provisions for ``pool``."""
        return DynamicWorkerConfig(
            worker_type=worker_type,
            cpu_cores=self.cpu_cores,
            memory_mb=self.memory_mb,
            disk_mb=self.disk_mb,
            gpu_count=self.gpu_count,
            labels=self.labels,
            pool=pool,
            image=self.image,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSpec:
    """A pool as declared. For a static pool ``min == max == size``; durations are seconds."""

    name: str
    kind: PoolKind
    provider: WorkerType
    template: WorkerTemplate = field(default_factory=WorkerTemplate)
    min: int = 0
    max: int = 1
    warm: int = 0
    idle_timeout: float = 300.0
    max_provisioning: int = 10
    provision_timeout: float = 120.0
    scale_up_cooldown: float = 0.0
    scale_down_cooldown: float = 30.0
    max_use_count: int | None = None

    @classmethod
    def static(cls, name: str, size: int, **fields: object) -> PoolSpec:
        return cls(name=name, kind=PoolKind.STATIC, min=size, max=size, **fields)  # type: ignore[arg-type]

    @property
    def worker_config(self) -> DynamicWorkerConfig:
        return self.template.config(self.name, self.provider)

    def violations(self) -> list[FieldViolation]:
        """Every invalid field, named as in the pool file (``min``, ``template.cpu_cores``, …)."""
        found = [FieldViolation(_as_in_file(v.field), v.description) for v in self.worker_config.violations()]
        if self.provider not in (WorkerType.PROCESS, WorkerType.DOCKER):
            found.append(FieldViolation("provider", f"must be process or docker, got {self.provider.value}"))
        for name, value, low in (("min", self.min, 0), ("max", self.max, 1), ("warm", self.warm, 0)):
            if not low <= value <= MAX_POOL_SIZE:
                found.append(FieldViolation(name, f"must be between {low} and {MAX_POOL_SIZE}, got {value}"))
        if self.min >= 0 and 1 <= self.max <= MAX_POOL_SIZE and self.min > self.max:
            found.append(FieldViolation("min", f"must not be above max ({self.max}), got {self.min}"))
        if not 1 <= self.max_provisioning <= MAX_POOL_SIZE:
            found.append(
                FieldViolation(
                    "max_provisioning", f"must be between 1 and {MAX_POOL_SIZE}, got {self.max_provisioning}"
                )
            )
        durations: tuple[tuple[str, float, float], ...] = (
            ("idle_timeout", self.idle_timeout, 0.0),
            ("provision_timeout", self.provision_timeout, 0.001),
            ("scale_up_cooldown", self.scale_up_cooldown, 0.0),
            ("scale_down_cooldown", self.scale_down_cooldown, 0.0),
        )
        for name, seconds, least in durations:
            if not least <= seconds <= MAX_DURATION:
                found.append(
                    FieldViolation(name, f"must be between {least:g} s and a week, got {seconds:g} s")
                )
        if self.max_use_count is not None and not 1 <= self.max_use_count <= 2**31 - 1:
            found.append(FieldViolation("max_use_count", f"must be at least 1, got {self.max_use_count}"))
        return found


def _as_in_file(name: str) -> str:
    """A worker config's field as the pool file names it: the pool is the pool's ``name``,
    ``capabilities.cpu_cores`` is ``template.cpu_cores``."""
    if name == "metadata.pool":
        return "name"
    return name.replace("capabilities.", "template.", 1).replace("metadata.", "template.", 1)
