"""The SQLite store's schema and statements: the migrations (each from one version to the next) and
:func:`migrate`, which runs them when the store opens, the statements that read and write ``workers``, and
records to and from their rows (timestamps as ISO 8601 text). :mod:`hodei.stores._sqlite` runs them on its
thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hodei._kept import SameAsLast
from hodei.domain import WorkerRecord
from hodei.errors import StoreError
from hodei.stores._rows import COLUMNS, from_row, to_row

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SELECT", "UPSERT", "as_row", "migrate", "record"]

# Each entry migrates the schema from version ``index`` to ``index + 1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE workers (
            worker_id TEXT PRIMARY KEY,
            worker_type TEXT NOT NULL,
            status TEXT NOT NULL,
            pool TEXT NOT NULL,
            hostname TEXT NOT NULL,
            agent_version TEXT NOT NULL,
            incarnation INTEGER NOT NULL,
            cpu_cores INTEGER NOT NULL,
            memory_mb INTEGER NOT NULL,
            disk_mb INTEGER NOT NULL,
            gpu_count INTEGER NOT NULL,
            labels TEXT NOT NULL,
            registered_at TEXT,
            updated_at TEXT,
            lease_ttl REAL,
            drained INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX workers_by_status ON workers (status, worker_id)",
    ),
    (
        # Single-use join tokens already spent (SpentTokens), until they expire.
        "CREATE TABLE spent_tokens (token_id TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID",
        "CREATE INDEX spent_tokens_by_expiry ON spent_tokens (expires_at)",
    ),
    (
        # Which registration spent each token: the same one spending it again is a retry, not a replay.
        "ALTER TABLE spent_tokens ADD COLUMN worker_id TEXT",
        "ALTER TABLE spent_tokens ADD COLUMN incarnation INTEGER",
    ),
    (
        # Resource pools: the job each worker is bound to (one worker per job), its uses, the pool definitions.
        "ALTER TABLE workers ADD COLUMN assignment TEXT",
        "ALTER TABLE workers ADD COLUMN job_id TEXT",
        "ALTER TABLE workers ADD COLUMN use_count INTEGER NOT NULL DEFAULT 0",
        "CREATE UNIQUE INDEX workers_by_job ON workers (job_id) WHERE job_id IS NOT NULL",
        "CREATE TABLE pools (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), source TEXT NOT NULL, "
        "text TEXT NOT NULL)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

SELECT = f"SELECT {', '.join(COLUMNS)} FROM workers"
UPSERT = (
    f"INSERT INTO workers ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
    f"ON CONFLICT (worker_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the file at ``path`` (open as ``db``) to :data:`SCHEMA_VERSION` (``PRAGMA user_version``), in one
    transaction; a file written by a newer hodei is refused rather than misread."""
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has registry schema version {version}, newer than this hodei's "
                f"{SCHEMA_VERSION}: upgrade hodei, or use another file"
            )
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _iso_text(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


# A new record's two times are one moment, and the new records of a batch share it: written once per batch.
_iso = SameAsLast(_iso_text)


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def record(row: Sequence[Any]) -> WorkerRecord:
    """The record of a row of :data:`SELECT`."""
    return from_row(row, _parse)


def as_row(stored: WorkerRecord) -> tuple[Any, ...]:
    """The values that :data:`UPSERT` writes for ``stored``."""
    return to_row(stored, _iso)
