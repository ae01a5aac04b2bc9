"""The throw-away PostgreSQL cluster of ``hodei.testing`` and the plugin's ``postgres_*`` fixtures.

The session's cluster comes from the ``postgres_cluster`` fixture; the tests of start and stop start their own.
Without PostgreSQL these tests are skipped (failed under CI=true), except those of that decision itself.
"""

from __future__ import annotations

import socket
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from hodei._infra.fixtures import skip_or_fail_for_missing
from hodei._infra.postgres import PostgresCluster, PostgresClusterError, missing_postgres


@pytest.fixture
def postgres_installed() -> None:
    missing = missing_postgres()
    if missing is not None:
        skip_or_fail_for_missing(f"PostgreSQL is needed: {missing}")


needs_postgres = pytest.mark.usefixtures("postgres_installed")


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_until_port_is_closed(port: int, deadline: float = 5.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not port_answers(port):
            return True
        time.sleep(0.05)
    return False


async def test_a_fresh_database_answers_a_query(postgres_dsn: str) -> None:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        assert await connection.fetchval("SELECT 40 + 2") == 42
        assert await connection.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        assert await connection.fetchval("SHOW fsync") == "on"
    finally:
        await connection.close()


async def test_each_test_database_is_its_own(postgres_cluster: PostgresCluster, postgres_dsn: str) -> None:
    other_dsn = postgres_cluster.create_database("another_database_of_this_test")
    try:
        first = await asyncpg.connect(postgres_dsn)
        second = await asyncpg.connect(other_dsn)
        try:
            await first.execute("CREATE TABLE only_here (x int)")
            names = {await first.fetchval("SELECT current_database()")}
            names.add(await second.fetchval("SELECT current_database()"))
            assert len(names) == 2
            assert "postgres" not in names
            assert await second.fetchval("SELECT to_regclass('only_here')") is None
        finally:
            await first.close()
            await second.close()
    finally:
        postgres_cluster.drop_database("another_database_of_this_test")


def test_the_session_cluster_listens_on_loopback_and_keeps_a_log(postgres_cluster: PostgresCluster) -> None:
    assert postgres_cluster.dsn == f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/postgres"
    assert postgres_cluster.dsn_for("a b") == f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/a%20b"
    assert postgres_cluster.execute("SHOW listen_addresses").strip() == "127.0.0.1"
    assert postgres_cluster.execute("SHOW max_connections").strip() == "200"
    assert postgres_cluster.log_path.is_file()


def test_a_database_name_that_needs_quoting_is_created_and_dropped(postgres_cluster: PostgresCluster) -> None:
    name = 'odd "name"; DROP'
    dsn = postgres_cluster.create_database(name)

    assert dsn.endswith("/odd%20%22name%22%3B%20DROP")
    assert name in postgres_cluster.execute("SELECT datname FROM pg_database").splitlines()
    postgres_cluster.drop_database(name)
    assert name not in postgres_cluster.execute("SELECT datname FROM pg_database").splitlines()


@needs_postgres
async def test_stop_removes_the_directory_and_closes_the_port() -> None:
    # Not under tmp_path: pytest makes its parent private to the user running the tests, and when that is root
    # the server's user could not reach the directory.
    requested = Path(tempfile.gettempdir()) / f"hodei-test-cluster-{uuid.uuid4().hex[:8]}"
    cluster = PostgresCluster(requested).start()
    assert cluster.directory == requested
    port, directory = cluster.port, cluster.directory
    connection = await asyncpg.connect(cluster.dsn)
    assert await connection.fetchval("SELECT 1") == 1
    await connection.close()

    cluster.stop()

    assert not directory.exists()
    assert wait_until_port_is_closed(port)
    cluster.stop()  # a second stop does nothing


@needs_postgres
def test_a_cluster_starts_once() -> None:
    with PostgresCluster() as cluster, pytest.raises(PostgresClusterError, match="started once"):
        cluster.start()
    with pytest.raises(PostgresClusterError, match="started once"):
        cluster.start()


@needs_postgres
def test_a_server_that_cannot_start_raises_with_the_tail_of_its_log() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cluster = PostgresCluster(port=port)

        with pytest.raises(PostgresClusterError, match="did not start") as caught:
            cluster.start()

    assert "could not bind" in caught.value.log_tail
    assert "could not bind" in str(caught.value)
    assert not cluster.directory.exists()


def test_a_directory_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")

    with pytest.raises(PostgresClusterError, match="not empty"):
        PostgresCluster(tmp_path).start()
    assert (tmp_path / "precious").read_text() == "keep me"


def test_a_missing_dependency_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)

    with pytest.raises(pytest.skip.Exception, match="initdb not found"):
        skip_or_fail_for_missing("initdb not found on PATH")


@pytest.mark.parametrize("ci", ["false", "", "0"])
def test_a_missing_dependency_skips_when_ci_is_not_true(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)

    with pytest.raises(pytest.skip.Exception, match="initdb not found"):
        skip_or_fail_for_missing("initdb not found on PATH")


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_a_missing_dependency_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)

    with pytest.raises(pytest.fail.Exception, match=r"initdb not found on PATH.*CI=true"):
        skip_or_fail_for_missing("initdb not found on PATH")
