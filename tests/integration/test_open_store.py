"""``open_store`` on real files and a real database: a SQLite URL opens that very file, a PostgreSQL URL opens
that database with a leadership of its own, and no password is ever shown.

PostgreSQL is the private cluster of the hodei pytest plugin (``postgres_dsn``); it trusts every local
connection, so whatever password a URL carries is accepted.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from hodei import WorkerCapabilities, WorkerRecord, WorkerType
from hodei._bootstrap import open_store
from hodei.stores import PostgresLeadership, PostgresRegistryStore
from hodei.stores._sqlite import SqliteRegistryStore

PASSWORD = "s3cret-Passw0rd"


def record(worker_id: str) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        worker_type=WorkerType.DOCKER,
        capabilities=WorkerCapabilities(2, 4096, 10_000, 0),
    )


def files_under(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def tables_in(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


async def test_a_relative_sqlite_url_opens_that_file_under_the_working_directory_creating_its_directories(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)

    opened = await open_store("sqlite:///state/hodei/r.db")
    try:
        assert isinstance(opened.store, SqliteRegistryStore)
        assert opened.store.path == Path("state/hodei/r.db")
        assert opened.leadership is None
        assert opened.shown == "sqlite:///state/hodei/r.db"
    finally:
        await opened.store.close()

    assert "state/hodei/r.db" in files_under(tmp_path)
    assert tables_in(tmp_path / "state" / "hodei" / "r.db") == ["workers", "spent_tokens", "pools"]


async def test_an_absolute_sqlite_url_opens_that_file_creating_its_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "r.db"

    opened = await open_store(f"sqlite:///{path}")
    try:
        assert isinstance(opened.store, SqliteRegistryStore)
        assert opened.store.path == path
        assert opened.leadership is None
        assert opened.shown == f"sqlite:///{path}"
        assert opened.shown.startswith("sqlite:////")
    finally:
        await opened.store.close()

    assert path.is_file()
    assert tables_in(path) == ["workers", "spent_tokens", "pools"]


async def test_a_sqlite_url_reopened_finds_what_was_stored_in_that_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    first = await open_store(url)
    try:
        [(_, stored)] = await first.store.upsert([record("kept")])
    finally:
        await first.store.close()

    second = await open_store(url)
    try:
        assert await second.store.get("kept") == stored
    finally:
        await second.store.close()


def with_password(dsn: str, scheme: str) -> str:
    """``postgresql://postgres@host:port/db`` -> ``SCHEME://postgres:PASSWORD@host:port/db``."""
    _, _, rest = dsn.partition("://")
    user, _, location = rest.partition("@")
    assert user and location, dsn
    return f"{scheme}://{user}:{PASSWORD}@{location}"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_a_postgres_url_opens_a_postgres_store_and_leadership_and_never_shows_the_password(
    postgres_dsn: str, scheme: str
) -> None:
    url = with_password(postgres_dsn, scheme)

    opened = await open_store(url)
    try:
        assert isinstance(opened.store, PostgresRegistryStore)
        assert isinstance(opened.leadership, PostgresLeadership)
        assert PASSWORD not in opened.shown
        assert opened.shown == f"{scheme}://{postgres_dsn.partition('://')[2]}"
        assert PASSWORD not in repr(opened)
        await opened.store.upsert([record("in-postgres")])
        assert await opened.leadership.acquire() is True
    finally:
        if opened.leadership is not None:
            await opened.leadership.release()
        await opened.store.close()

    # It was the database the URL names.
    db = await asyncpg.connect(postgres_dsn)
    try:
        rows = await db.fetch("SELECT worker_id FROM hodei_workers")
    finally:
        await db.close()
    assert [row["worker_id"] for row in rows] == ["in-postgres"]
