"""The SQLite store writes a group's rows a statement of many rows at a time: the table ends as it would with
one statement per row, whatever the number of rows and however many values the connection can bind."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hodei.domain import Assignment, WorkerStatus
from hodei.stores._rows import COLUMNS
from hodei.stores._sqlite_schema import ROW_STEP, ROWS_PER_STATEMENT, UPSERT, as_row, migrate, upsert_rows
from tests.helpers import stored_worker


def connection() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    migrate(db, Path(":memory:"))
    return db


@pytest.fixture
def pair() -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    """A connection written row by row (the reference) and one written by :func:`upsert_rows`."""
    reference, grouped = connection(), connection()
    yield reference, grouped
    reference.close()
    grouped.close()


def row(worker_id: str, incarnation: int = 0, **fields: Any) -> tuple[Any, ...]:
    return as_row(stored_worker(worker_id, incarnation, **fields))


def table(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return db.execute(f"SELECT {', '.join(COLUMNS)} FROM workers ORDER BY worker_id").fetchall()


def statements(db: sqlite3.Connection) -> list[str]:
    seen: list[str] = []
    db.set_trace_callback(seen.append)
    return seen


def rows_in(statements: list[str]) -> list[int]:
    """How many rows each traced statement wrote."""
    return [statement.count("), (") + 1 for statement in statements]


@pytest.mark.parametrize(
    "count",
    [
        0,
        1,
        2,
        ROW_STEP,
        ROW_STEP + 1,
        50,
        ROWS_PER_STATEMENT - 1,
        ROWS_PER_STATEMENT,
        ROWS_PER_STATEMENT + 1,
        300,
    ],
)
def test_rows_written_together_leave_the_table_as_rows_written_one_by_one(
    pair: tuple[sqlite3.Connection, sqlite3.Connection], count: int
) -> None:
    reference, grouped = pair
    # Some of the rows are already there, with other values: those are updated, the others inserted.
    before = [row(f"w-{n:04d}", 1, status=WorkerStatus.DRAINING) for n in range(0, 2 * count, 3)]
    rows = [row(f"w-{n:04d}", 2, hostname=f"host-{n}") for n in range(count)]
    for db in pair:
        db.executemany(UPSERT, before)

    reference.executemany(UPSERT, rows)
    upsert_rows(grouped, rows)

    assert table(grouped) == table(reference)
    assert len(table(grouped)) == len({r[0] for r in before + rows})


def test_a_worker_twice_among_the_rows_ends_as_its_last_row(
    pair: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    reference, grouped = pair
    job = Assignment(assignment_id="as-1", job_id="job-1", worker_id="a", incarnation=2)
    rows = [row("a", 1), row("b", 1), row("a", 2, assignment=job)]

    reference.executemany(UPSERT, rows)
    upsert_rows(grouped, rows)

    assert table(grouped) == table(reference)
    assert [(r[0], r[COLUMNS.index("incarnation")]) for r in table(grouped)] == [("a", 2), ("b", 1)]


@pytest.mark.parametrize(
    ("count", "sizes"),
    [
        (0, []),
        (1, [1]),
        (ROW_STEP, [ROW_STEP]),
        (ROW_STEP + 1, [ROW_STEP, 1]),
        (50, [48, 2]),
        (ROWS_PER_STATEMENT, [ROWS_PER_STATEMENT]),
        (ROWS_PER_STATEMENT + 1, [ROWS_PER_STATEMENT, 1]),
        (2 * ROWS_PER_STATEMENT + 44, [ROWS_PER_STATEMENT, ROWS_PER_STATEMENT, 32, 12]),
    ],
)
def test_a_group_is_written_in_statements_of_at_most_rows_per_statement_beyond_the_step_a_multiple_of_it(
    pair: tuple[sqlite3.Connection, sqlite3.Connection], count: int, sizes: list[int]
) -> None:
    _, grouped = pair
    traced = statements(grouped)

    upsert_rows(grouped, [row(f"w-{n:04d}") for n in range(count)])

    assert rows_in(traced) == sizes


def test_every_group_size_is_written_in_statements_of_23_sizes() -> None:
    db = connection()
    traced = statements(db)

    for count in range(1, 3 * ROWS_PER_STATEMENT + 1):
        upsert_rows(db, [row(f"w-{count}-{n:04d}") for n in range(count)])

    sizes = set(rows_in(traced))
    db.close()
    assert sizes == set(range(1, ROW_STEP + 1)) | set(range(2 * ROW_STEP, ROWS_PER_STATEMENT + 1, ROW_STEP))
    assert len(sizes) == 23


def test_a_connection_that_binds_fewer_values_gets_fewer_rows_a_statement(
    pair: tuple[sqlite3.Connection, sqlite3.Connection],
) -> None:
    reference, grouped = pair
    grouped.setlimit(
        sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 2 * len(COLUMNS) + 1
    )  # room for two rows, not three
    traced = statements(grouped)
    rows = [row(f"w-{n}") for n in range(5)]

    reference.executemany(UPSERT, rows)
    upsert_rows(grouped, rows)

    assert rows_in(traced) == [2, 2, 1]
    assert table(grouped) == table(reference)


def test_a_row_the_database_refuses_writes_nothing_of_its_statement() -> None:
    """The unique index on job_id: the statement fails whole, as the transaction around it then does."""
    db = connection()
    first = Assignment(assignment_id="as-1", job_id="job-1", worker_id="a", incarnation=0)
    second = Assignment(assignment_id="as-2", job_id="job-1", worker_id="c", incarnation=0)
    rows = [row("a", assignment=first), row("b"), row("c", assignment=second)]

    with pytest.raises(sqlite3.IntegrityError):
        upsert_rows(db, rows)

    assert table(db) == []
    db.close()
