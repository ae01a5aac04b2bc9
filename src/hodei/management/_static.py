"""Static workers: machines declared in a TOML file rather than provisioned.

::

    [[workers]]
    id = "build-01"
    cpu_cores = 8
    memory_mb = 16384
    pool = "static"            # optional, default "static"
    hostname = "build-01.lan"  # optional
    labels = { arch = "amd64" }
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerType
from hodei.errors import HodeiError

__all__ = ["StaticWorkerFileError", "load_static_workers", "static_worker"]


class StaticWorkerFileError(HodeiError, ValueError):
    """The static worker file cannot be read; the message names the entry and the key."""


def static_worker(
    worker_id: str,
    *,
    cpu_cores: int,
    memory_mb: int,
    labels: dict[str, str] | None = None,
    pool: str = "static",
    hostname: str = "",
) -> DynamicWorker:
    config = DynamicWorkerConfig(
        worker_type=WorkerType.STATIC,
        cpu_cores=cpu_cores,
        memory_mb=memory_mb,
        labels=labels or {},
        pool=pool,
    )
    return DynamicWorker(worker_id, WorkerType.STATIC, config, hostname=hostname)


_KEYS = {"id": str, "cpu_cores": int, "memory_mb": int, "labels": dict, "pool": str, "hostname": str}
_KIND_NAMES = {str: "a string", int: "an integer", dict: "a table"}


def _entry(position: int, entry: Any) -> DynamicWorker:
    where = f"workers[{position}]"
    if not isinstance(entry, dict):
        raise StaticWorkerFileError(f"{where} must be a table")
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise StaticWorkerFileError(f"{where}: unknown key(s) {', '.join(unknown)}")
    for key in ("id", "cpu_cores", "memory_mb"):
        if key not in entry:
            raise StaticWorkerFileError(f"{where}: missing key {key!r}")
    for key, kind in _KEYS.items():
        if key in entry and (not isinstance(entry[key], kind) or isinstance(entry[key], bool)):
            raise StaticWorkerFileError(f"{where}.{key} must be {_KIND_NAMES[kind]}")
    labels = entry.get("labels", {})
    for key, value in labels.items():
        if not isinstance(value, str):
            raise StaticWorkerFileError(f"{where}.labels.{key} must be a string, got {value!r}")
    return static_worker(
        entry["id"],
        cpu_cores=entry["cpu_cores"],
        memory_mb=entry["memory_mb"],
        labels=labels,
        pool=entry.get("pool", "static"),
        hostname=entry.get("hostname", ""),
    )


def load_static_workers(path: str | Path) -> list[DynamicWorker]:
    """Read the workers declared in a TOML file. Values are validated at registration, like any worker's."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StaticWorkerFileError(f"{path}: {exc}") from exc
    entries = document.get("workers", [])
    if not isinstance(entries, list):
        raise StaticWorkerFileError(f"{path}: 'workers' must be an array of tables ([[workers]])")
    return [_entry(position, entry) for position, entry in enumerate(entries)]
