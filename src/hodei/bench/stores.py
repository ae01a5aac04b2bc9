"""The registry store a benchmark's scheduler uses: memory, a fresh SQLite file, or a fresh PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["STORES", "registry_store"]

STORES = ("sqlite", "memory", "postgres")
"""The registry stores a scenario's scheduler can use; the first is what ``hodei scheduler serve`` defaults to."""


@contextlib.asynccontextmanager
async def registry_store(kind: str) -> AsyncIterator[str]:
    """The registry store of a scenario's scheduler: memory, a fresh SQLite file, or a fresh PostgreSQL cluster
    (started here, on loopback, with fsync on: durable commits cost what they cost)."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="hodei-bench-") as directory:
            yield f"sqlite:///{Path(directory) / 'registry.db'}"
    elif kind == "postgres":
        from hodei._infra.postgres import PostgresCluster, missing_postgres

        if (missing := missing_postgres()) is not None:
            raise RuntimeError(f"--store postgres needs PostgreSQL: {missing}")
        cluster = await asyncio.to_thread(PostgresCluster().start)
        try:
            yield await asyncio.to_thread(cluster.create_database, "hodei_bench")
        finally:
            await asyncio.to_thread(cluster.stop)
    else:
        yield "memory"
