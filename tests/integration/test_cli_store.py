"""``hodei scheduler serve --store``, run as a real subprocess: the registry outlives the scheduler in a SQLite
file, a store that cannot be opened stops it with one line and exit code 1, the default store is a file in the
user's state directory, and a sole scheduler leads lease expiry.

Every process a test starts is killed by the test (by its PID) whatever happens; every wait has a deadline.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from hodei import SchedulerPortClient, WorkerStatus
from hodei._infra.postgres import PostgresCluster
from hodei.server._server import LEADER_HEALTH
from tests.helpers import free_port, make_worker
from tests.integration.helpers import CLI_ENV, health_becomes_serving, run_hodei, scheduler_serve

PASSWORD = "s3cret-Passw0rd"


async def test_a_worker_registered_with_a_sqlite_store_is_still_there_after_sigterm_and_restart(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"

    async with scheduler_serve("--store", url) as first:
        async with SchedulerPortClient(first.target) as client:
            await client.register_worker(make_worker("durable-1", labels={"team": "red"}))
        stopped = await first.stop()

    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == [
        f"hodei scheduler listening on {first.target} (store: {url})",
        "hodei scheduler stopped",
    ]
    async with scheduler_serve("--store", url) as second:
        async with SchedulerPortClient(second.target) as client:
            found = await client.get_worker("durable-1", timeout=10)
        await second.stop()

    assert found is not None
    assert (found.worker_id, found.status, dict(found.labels)) == (
        "durable-1",
        WorkerStatus.AVAILABLE,
        {"team": "red"},
    )


async def test_a_registration_acknowledged_with_a_sqlite_store_survives_a_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"

    async with scheduler_serve("--store", url) as first:
        async with SchedulerPortClient(first.target) as client:
            await client.register_worker(make_worker("durable-2"))
        killed = await first.stop(signal.SIGKILL)

    assert killed.returncode == -signal.SIGKILL
    async with scheduler_serve("--store", url) as second, SchedulerPortClient(second.target) as client:
        found = await client.get_worker("durable-2", timeout=10)

    assert found is not None
    assert found.status is WorkerStatus.AVAILABLE


async def test_scheduler_serve_prints_its_listening_line_with_the_store_while_it_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"

    async with scheduler_serve("--store", url) as served:
        line = await served.listening_line()

    assert line == f"hodei scheduler listening on {served.target} (store: {url})"


async def test_an_unknown_store_scheme_makes_scheduler_serve_exit_1_with_one_line_on_stderr() -> None:
    served = await run_hodei(
        "scheduler", "serve", "--listen", f"127.0.0.1:{free_port()}", "--store", "bogus://x", timeout=15
    )

    assert served.returncode == 1, served
    assert served.stdout == ""
    assert served.stderr.splitlines() == [
        "hodei scheduler: cannot open the registry store: "
        "--store 'bogus://x': expected memory, sqlite:///PATH or postgresql://…"
    ]


async def test_an_unreachable_postgres_store_makes_scheduler_serve_exit_1_hiding_the_password() -> None:
    url = f"postgresql://nobody:{PASSWORD}@127.0.0.1:{free_port()}/db"

    served = await run_hodei(
        "scheduler", "serve", "--listen", f"127.0.0.1:{free_port()}", "--store", url, timeout=20
    )

    assert served.returncode == 1, served
    assert "hodei scheduler: cannot open the registry store: " in served.stderr
    assert "listening" not in served.stdout
    assert "Traceback" not in served.stderr
    assert PASSWORD not in served.stdout + served.stderr


async def test_an_unreachable_postgres_store_says_which_database_and_why_in_one_line() -> None:
    port = free_port()
    url = f"postgresql://nobody:{PASSWORD}@127.0.0.1:{port}/db?password={PASSWORD}&sslmode=disable"

    served = await run_hodei(
        "scheduler", "serve", "--listen", f"127.0.0.1:{free_port()}", "--store", url, timeout=20
    )

    assert served.returncode == 1, served
    [line] = served.stderr.splitlines()
    assert line.startswith(
        "hodei scheduler: cannot open the registry store: the registry database "
        f"postgresql://nobody@127.0.0.1:{port}/db?sslmode=disable is unreachable: "
    ), line


async def test_a_postgres_that_refuses_the_database_is_one_line_naming_it(
    postgres_cluster: PostgresCluster,
) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{postgres_cluster.port}/no_such_db"

    served = await run_hodei(
        "scheduler", "serve", "--listen", f"127.0.0.1:{free_port()}", "--store", url, timeout=20
    )

    assert served.returncode == 1, served
    assert served.stderr.splitlines() == [
        "hodei scheduler: cannot open the registry store: the registry database "
        f"postgresql://postgres@127.0.0.1:{postgres_cluster.port}/no_such_db refused the connection: "
        'database "no_such_db" does not exist'
    ]


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (
            "/proc/hodei/r.db",
            "cannot open /proc/hodei/r.db: [Errno 2] No such file or directory: '/proc/hodei'",
        ),
        ("/dev/null/r.db", "cannot open /dev/null/r.db: [Errno 17] File exists: '/dev/null'"),
    ],
)
async def test_a_sqlite_file_that_cannot_be_made_is_one_line_naming_it(where: str, reason: str) -> None:
    served = await run_hodei(
        "scheduler",
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--store",
        f"sqlite:///{where}",
        timeout=20,
    )

    assert served.returncode == 1, served
    assert served.stderr.splitlines() == [f"hodei scheduler: cannot open the registry store: {reason}"]


async def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("my notes, not a registry\n" * 100)

    served = await run_hodei(
        "scheduler",
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--store",
        f"sqlite:///{not_a_db}",
        timeout=20,
    )

    assert served.returncode == 1, served
    assert served.stderr.splitlines() == [
        f"hodei scheduler: cannot open the registry store: cannot use {not_a_db} as a registry: file is not a database"
    ]
    assert not_a_db.read_text() == "my notes, not a registry\n" * 100


async def test_without_store_scheduler_serve_keeps_its_registry_in_xdg_state_home(tmp_path: Path) -> None:
    state, home = tmp_path / "state", tmp_path / "home"
    env = CLI_ENV | {"XDG_STATE_HOME": str(state), "HOME": str(home)}

    async with scheduler_serve(env=env) as served:
        async with SchedulerPortClient(served.target) as client:
            await client.register_worker(make_worker("in-the-default-store"))
        stopped = await served.stop()

    path = state / "hodei" / "registry.db"
    assert stopped.returncode == 0, stopped.stderr
    assert (
        stopped.stdout.splitlines()[0]
        == f"hodei scheduler listening on {served.target} (store: sqlite:///{path})"
    )
    assert path.is_file()
    assert not home.exists()
    async with (
        scheduler_serve("--store", f"sqlite:///{path}") as again,
        SchedulerPortClient(again.target) as client,
    ):
        assert await client.get_worker("in-the-default-store", timeout=10) is not None


@pytest.mark.parametrize("options", [(), ("--sweep-interval", "0.2", "--mass-expiry-threshold", "0.9")])
async def test_a_sole_scheduler_becomes_the_lease_leader_in_its_health(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    async with scheduler_serve("--store", f"sqlite:///{tmp_path / 'r.db'}", *options) as served:
        await health_becomes_serving(served.target, LEADER_HEALTH, timeout=10)

        assert served.process.returncode is None
