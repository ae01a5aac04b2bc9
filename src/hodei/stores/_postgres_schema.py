"""The PostgreSQL store's schema and statements: the migrations (each from one version to the next), the
statements that read and write ``hodei_workers`` in bulk (``unnest`` of one array of ``hodei_worker_row``), and
records to and from their rows. No connection here: :mod:`hodei.stores._postgres` runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from hodei.domain import WorkerRecord
from hodei.stores._rows import COLUMNS, from_row, to_row

__all__ = [
    "CHANGE",
    "INSERT",
    "INSERT_NEW",
    "MIGRATIONS",
    "MIGRATION_LOCK",
    "SCHEMA_VERSION",
    "SELECT",
    "UPDATE",
    "VIEW",
    "as_rows",
    "record",
    "viewed",
]

MIGRATION_LOCK = 0x686F6465_69000001  # "hodei" + 1: held while the schema is migrated
_JOB_INDEX = "hodei_workers_by_job"  # unique: at most one worker per job
# Rows go to the database as one array of this type, a tuple each: asyncpg then encodes each row's values with
# their own codecs, instead of asking of every value of one array per column whether it is an array itself
# (11.6 against 16.4 µs of the scheduler's CPU per row in transactions of 2,000 here, 22 against 30 µs in all).
# Its attributes are the columns written, in COLUMNS order. A change of columns gets a type of a new name (say
# hodei_worker_row_2), never an ALTER of this one: replicas still running the code before it send rows of this
# shape.
_ROW_TYPE = "hodei_worker_row"

# Each entry migrates the schema from version ``index`` to ``index + 1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE hodei_workers (
            worker_id text PRIMARY KEY,
            worker_type text NOT NULL,
            status text NOT NULL,
            pool text NOT NULL,
            hostname text NOT NULL,
            agent_version text NOT NULL,
            incarnation bigint NOT NULL,
            cpu_cores integer NOT NULL,
            memory_mb bigint NOT NULL,
            disk_mb bigint NOT NULL,
            gpu_count integer NOT NULL,
            labels jsonb NOT NULL,
            registered_at timestamptz,
            updated_at timestamptz,
            lease_ttl double precision,
            drained boolean NOT NULL,
            last_seen timestamptz
        )""",
        "CREATE INDEX hodei_workers_by_status ON hodei_workers (status, worker_id)",
    ),
    (
        # Single-use join tokens already spent by any replica (SpentTokens), until they expire.
        "CREATE TABLE hodei_spent_tokens (token_id text PRIMARY KEY, expires_at timestamptz NOT NULL)",
        "CREATE INDEX hodei_spent_tokens_by_expiry ON hodei_spent_tokens (expires_at)",
    ),
    (
        # The replica whose Connect stream the worker's agent holds (set at each lease sync, cleared when the
        # stream closes): what listings through the other replicas show as "connected via".
        "ALTER TABLE hodei_workers ADD COLUMN stream_at text",
    ),
    (
        # Which registration spent each token: the same one spending it again is a retry (after an ambiguous
        # commit, or a lost answer), not a replay.
        "ALTER TABLE hodei_spent_tokens ADD COLUMN worker_id text, ADD COLUMN incarnation bigint",
    ),
    (
        # Resource pools: the job each worker is bound to (one worker per job), its uses, and the pool
        # definitions every replica starts from (a table of one row).
        "ALTER TABLE hodei_workers ADD COLUMN assignment text, ADD COLUMN job_id text, "
        "ADD COLUMN use_count bigint NOT NULL DEFAULT 0",
        f"CREATE UNIQUE INDEX {_JOB_INDEX} ON hodei_workers (job_id) WHERE job_id IS NOT NULL",
        "CREATE TABLE hodei_pools (singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), "
        "source text NOT NULL, text text NOT NULL, saved_at timestamptz NOT NULL DEFAULT now())",
    ),
    (
        # The rows a statement writes, as one argument (labels and assignment as JSON text).
        f"""CREATE TYPE {_ROW_TYPE} AS (
            worker_id text,
            worker_type text,
            status text,
            pool text,
            hostname text,
            agent_version text,
            incarnation bigint,
            cpu_cores integer,
            memory_mb bigint,
            disk_mb bigint,
            gpu_count integer,
            labels text,
            registered_at timestamptz,
            updated_at timestamptz,
            lease_ttl double precision,
            drained boolean,
            assignment text,
            job_id text,
            use_count bigint
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_UNNEST = f"unnest($1::{_ROW_TYPE}[]) AS u"
_VALUES = ", ".join("u.labels::jsonb" if c == "labels" else f"u.{c}" for c in COLUMNS)
_SEEN = "CASE WHEN u.lease_ttl IS NULL THEN NULL ELSE now() END"
SELECT = f"SELECT {', '.join(COLUMNS)} FROM hodei_workers"
VIEW = f"SELECT {', '.join(COLUMNS)}, stream_at FROM hodei_workers"  # what reads for callers also show
# New workers only: all of them or, if the table holds any of them already, none (a unique violation).
INSERT_NEW = (
    f"INSERT INTO hodei_workers ({', '.join(COLUMNS)}, last_seen) SELECT {_VALUES}, {_SEEN} FROM {_UNNEST}"
)
INSERT = f"{INSERT_NEW} ON CONFLICT (worker_id) DO NOTHING RETURNING worker_id"
_SET = ", ".join(f"{c} = u.{c}::jsonb" if c == "labels" else f"{c} = u.{c}" for c in COLUMNS[1:])
# A registration is news of its worker (last_seen moves); a status change made by the scheduler is not.
UPDATE = (
    f"UPDATE hodei_workers AS w SET {_SET}, last_seen = COALESCE({_SEEN}, w.last_seen) "
    f"FROM {_UNNEST} WHERE w.worker_id = u.worker_id"
)
CHANGE = f"UPDATE hodei_workers AS w SET {_SET} FROM {_UNNEST} WHERE w.worker_id = u.worker_id"


def _same(moment: datetime | None) -> datetime | None:
    return moment


def record(row: Any) -> WorkerRecord:
    return from_row(row, _same)


def viewed(row: Any) -> WorkerRecord:
    """A row of :data:`VIEW`: the record, with the replica holding its agent's stream as ``connected_via``."""
    stored = from_row(tuple(row)[: len(COLUMNS)], _same)
    return replace(stored, connected_via=row[len(COLUMNS)]) if row[len(COLUMNS)] else stored


def as_rows(records: Sequence[WorkerRecord]) -> list[tuple[Any, ...]]:
    """The statements' one argument: the records as rows of ``hodei_worker_row``."""
    return [to_row(each, _same) for each in records]
