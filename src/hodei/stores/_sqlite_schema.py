"""The SQLite store's schema and statements: the migrations (each from one version to the next) and
:func:`migrate`, which runs them when the store opens, the statements that read and write ``workers``, and
records to and from their rows (timestamps as ISO 8601 text). :mod:`hodei.stores._sqlite` runs them on its
thread.
"""

from __future__ import annotations

import functools
import itertools
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hodei._kept import SameAsLast
from hodei._quoting import driver_message
from hodei.domain import WorkerRecord
from hodei.errors import StoreError, StoreRefusedData, StoreUnavailable
from hodei.stores._bound import check_bindings, newly_bound
from hodei.stores._rows import COLUMNS, from_row, to_row

__all__ = [
    "DRIVER_ERRORS",
    "MIGRATIONS",
    "ROWS_PER_STATEMENT",
    "SCHEMA_VERSION",
    "SELECT",
    "STATEMENT_CACHE",
    "UPSERT",
    "as_row",
    "bind_jobs",
    "by_worker_id",
    "configure",
    "driver_error",
    "fetch_rows",
    "migrate",
    "record",
    "upsert_rows",
]

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
_ROW = f"({', '.join('?' for _ in COLUMNS)})"
_ON_CONFLICT = "ON CONFLICT (worker_id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in COLUMNS[1:]
)


@functools.cache
def _upsert_of(rows: int) -> str:
    """The statement that writes ``rows`` rows, each as :data:`UPSERT` writes one."""
    return f"INSERT INTO workers ({', '.join(COLUMNS)}) VALUES {', '.join([_ROW] * rows)} {_ON_CONFLICT}"


UPSERT = _upsert_of(1)

ROWS_PER_STATEMENT = 128
"""Rows that one :func:`upsert_rows` statement writes at most (fewer if the connection binds fewer values).

A group's rows are written in a few statements, not one statement each. The sqlite3 module lets go of the GIL
for every step of a statement, and the store's thread, sharing the GIL with a busy event loop, waits for it
back after each one. Measured with 500 registrations in flight (``hodei bench``, twelve pairs against one
statement per row): the p95 ratio to the raw baseline 1.37 against 1.54 (medians), throughput unchanged; a
registration's wait for its commit had a p95 of about 50 ms against 75-116 ms."""

ROW_STEP = 16
"""A statement writes any number of rows up to this, and a multiple of it beyond: a group of 50 rows is a
statement of 48 and one of 2. So a connection compiles 23 upserts (1 to 16 rows, then 32, 48 ... 128), about
2 MB, not one of each of the 128 row counts, about 19 MB. Measured with 500 registrations in flight (``hodei
bench``, 16 alternating pairs against a statement of each count): the scheduler's RSS after 30,000
registrations 89-93 MB against 100-104 MB; the throughput ratio to the raw baseline 0.687 against 0.669 and the
p95 ratio 1.59 against 1.64 (medians): no cost measurable."""

STATEMENT_CACHE = 256
"""Statements a connection keeps compiled: the upserts of :data:`ROW_STEP`'s row counts, and the store's
others, with room to spare."""


def upsert_rows(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write ``rows`` (of :func:`as_row`) in order, as many in each statement as the connection can bind, at
    most :data:`ROWS_PER_STATEMENT`, and beyond :data:`ROW_STEP` a multiple of it: what :data:`UPSERT` of each
    row, one after the other, would write."""
    most = max(1, min(ROWS_PER_STATEMENT, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(COLUMNS)))
    start = 0
    while start < len(rows):
        left = len(rows) - start
        count = min(most, left if left <= ROW_STEP else left - left % ROW_STEP)
        chunk = rows[start : start + count]
        db.execute(_upsert_of(count), list(itertools.chain.from_iterable(chunk)))
        start += count


_IN_CHUNK = 500  # ids per "IN (...)": well under SQLite's limit on bound parameters

DRIVER_ERRORS = (OverflowError, UnicodeEncodeError, sqlite3.Error)
"""What the driver raises: a value SQLite cannot hold, or a database that cannot be used now."""


def driver_error(error: BaseException) -> StoreRefusedData | StoreUnavailable:
    """What one of :data:`DRIVER_ERRORS` means to the store's caller: data the file cannot hold
    (:class:`StoreRefusedData`), or a store that cannot be used now (:class:`StoreUnavailable`: locked past the
    busy timeout, read-only, disk full, I/O error, damage)."""
    if isinstance(error, (OverflowError, UnicodeEncodeError, sqlite3.DataError)):
        return StoreRefusedData(f"the registry store cannot hold this data ({type(error).__name__})")
    return StoreUnavailable(f"the registry store cannot be used now ({driver_message(error)})")


def configure(db: sqlite3.Connection, *, synchronous: str, busy_timeout_ms: int) -> None:
    """A connection's settings, the same for every connection to the file: WAL, ``synchronous``, and how long
    a write waits for another's lock."""
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")


def fetch_rows(db: sqlite3.Connection, worker_ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """The stored rows (of :data:`SELECT`) of those of ``worker_ids`` that are stored."""
    found: list[tuple[Any, ...]] = []
    for start in range(0, len(worker_ids), _IN_CHUNK):
        chunk = worker_ids[start : start + _IN_CHUNK]
        found += db.execute(f"{SELECT} WHERE worker_id IN ({', '.join('?' for _ in chunk)})", chunk)
    return found


def bind_jobs(
    db: sqlite3.Connection, held: Mapping[str, str | None], written: Mapping[str, WorkerRecord]
) -> None:
    """Refuse ``written`` if it would bind a job twice (:mod:`hodei.stores._bound`); unbind the workers whose job
    moves to another written one, before they are written."""
    newly = newly_bound(held, written)
    if not newly:
        return
    holders = db.execute(
        "SELECT job_id, worker_id FROM workers WHERE job_id IN (SELECT value FROM json_each(?))",
        (json.dumps(newly),),
    ).fetchall()
    movers = check_bindings(written, dict(holders))
    if movers:
        db.execute(
            "UPDATE workers SET job_id = NULL WHERE worker_id IN (SELECT value FROM json_each(?))",
            (json.dumps(movers),),
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


def by_worker_id(rows: Iterable[Sequence[Any]]) -> dict[str, WorkerRecord]:
    """The records of rows of :data:`SELECT`, by worker id."""
    return {row[0]: record(row) for row in rows}


def as_row(stored: WorkerRecord) -> tuple[Any, ...]:
    """The values that :data:`UPSERT` writes for ``stored``."""
    return to_row(stored, _iso)
