"""The SQLite store's writer process: its exchange with the scheduler's end, and what happens when it dies.

The writer's end is driven in this process too (``serve`` and ``main`` over real pipes), so that each of its
answers is checked exactly; the store's own writer is a real process, killed with signals by its PID.
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import re
import signal
import sqlite3
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from hodei.domain import Assignment, UpsertOutcome, WorkerRecord, WorkerStatus
from hodei.errors import JobAlreadyBound, StoreError, StoreRefusedData, StoreUnavailable
from hodei.ports import WorkerFilter
from hodei.stores import _sqlite_writer as sqlite_writer
from hodei.stores._memory import MemoryRegistryStore
from hodei.stores._sqlite import SqliteRegistryStore
from hodei.stores._sqlite_schema import SELECT, as_row, configure, migrate
from hodei.stores._sqlite_writer import READY, WriterProcess, main, register_rows, serve
from hodei.testing import FakeClock
from tests.helpers import MOMENT, stored_worker, wait_until

LENGTH = struct.Struct("<I")


def worker(worker_id: str, incarnation: int = 1, **fields: Any) -> WorkerRecord:
    return stored_worker(worker_id, incarnation, lease_ttl=30.0, **fields)


def bound(worker_id: str, job_id: str, incarnation: int = 1) -> WorkerRecord:
    return worker(
        worker_id,
        incarnation,
        status=WorkerStatus.BUSY,
        assignment=Assignment(
            assignment_id=f"as-{job_id}",
            job_id=job_id,
            worker_id=worker_id,
            incarnation=incarnation,
            lease_ttl=30.0,
            bound_at=MOMENT,
        ),
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    configure(connection, synchronous="FULL", busy_timeout_ms=100)
    migrate(connection, tmp_path / "registry.db")
    yield connection
    connection.close()


def frames(*bodies: object) -> bytes:
    out = b""
    for body in bodies:
        data = pickle.dumps(body)
        out += LENGTH.pack(len(data)) + data
    return out


def replies(out: bytes) -> list[Any]:
    found, at = [], 0
    while at < len(out):
        (length,) = LENGTH.unpack_from(out, at)
        found.append(pickle.loads(out[at + LENGTH.size : at + LENGTH.size + length]))
        at += LENGTH.size + length
    return found


def stored(db: sqlite3.Connection) -> list[str]:
    return [worker_id for (worker_id,) in db.execute("SELECT worker_id FROM workers ORDER BY worker_id")]


# -- the writer's end -----------------------------------------------------------------------------------------


def test_a_frame_is_written_in_one_transaction_and_answered_with_the_rows_it_found(
    db: sqlite3.Connection,
) -> None:
    assert register_rows(db, [as_row(worker("a"))]) == []
    again = [as_row(worker("a", 2)), as_row(worker("b"))]
    found = register_rows(db, again)
    assert [row[0] for row in found] == ["a"]
    assert found[0][6] == 1  # the incarnation it had before this frame
    assert stored(db) == ["a", "b"]
    assert db.execute("SELECT incarnation FROM workers WHERE worker_id = 'a'").fetchone() == (2,)


GROUPS = {
    "new workers, each once": [worker("a"), worker("b"), worker("c")],
    "a worker twice": [worker("a"), worker("b"), worker("a", 2)],
    "a worker stored before": [worker("stored", 2), worker("b")],
    "a worker bound to a job": [worker("a"), bound("b", "job-2")],
}


@pytest.mark.parametrize("group", GROUPS.values(), ids=GROUPS.keys())
async def test_a_group_leaves_the_table_as_the_memory_store_leaves_its_records(
    db: sqlite3.Connection, group: list[WorkerRecord]
) -> None:
    reference = MemoryRegistryStore()
    for first in ([worker("stored")], group):
        await reference.upsert(first)
        register_rows(db, [as_row(r) for r in first])
    expected = sorted(as_row(r) for r in await reference.list(WorkerFilter(), limit=10))
    assert db.execute(f"{SELECT} ORDER BY worker_id").fetchall() == expected


def test_the_jobs_a_registration_says_it_runs_keep_its_job_bound(db: sqlite3.Connection) -> None:
    register_rows(db, [as_row(bound("a", "job-1"))])
    # A new incarnation that says it still runs the job keeps it; one that does not, loses it.
    register_rows(db, [as_row(worker("a", 2))], {0: ("as-job-1",)})
    assert db.execute("SELECT job_id FROM workers WHERE worker_id = 'a'").fetchone() == ("job-1",)
    register_rows(db, [as_row(worker("a", 3))])
    assert db.execute("SELECT job_id FROM workers WHERE worker_id = 'a'").fetchone() == (None,)


def test_each_failure_of_the_store_is_answered_by_its_kind_and_the_writer_goes_on(
    db: sqlite3.Connection, tmp_path: Path
) -> None:
    good: tuple[list[tuple[Any, ...]], dict[int, tuple[str, ...]]] = ([as_row(worker("good"))], {})
    other = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    out = io.BytesIO()
    register_rows(db, [as_row(bound("holder", "job-1"))])

    serve(db, io.BytesIO(frames(([as_row(bound("second", "job-1"))], {}))), out)
    serve(db, io.BytesIO(frames(([as_row(worker("big", 2**63))], {}))), out)
    other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock, past the busy timeout
    serve(db, io.BytesIO(frames(good)), out)
    other.execute("ROLLBACK")
    serve(db, io.BytesIO(frames(good)), out)

    assert replies(out.getvalue()) == [
        ("bound", "job-1"),
        ("refused", "the registry store cannot hold this data (OverflowError)"),
        ("unavailable", "the registry store cannot be used now (database is locked)"),
        ("ok", []),
    ]
    assert stored(db) == ["good", "holder"]  # nothing of the refused frames was written
    other.close()


def test_a_fault_in_a_group_fails_that_group_alone_and_the_writer_goes_on(db: sqlite3.Connection) -> None:
    out = io.BytesIO()
    bad: tuple[list[tuple[Any, ...]], dict[int, tuple[str, ...]]] = (
        [as_row(worker("a")), ("not", "a", "row")],
        {},
    )
    serve(db, io.BytesIO(frames(bad, ([as_row(worker("b"))], {}))), out)
    assert replies(out.getvalue()) == [("failed", "IndexError: tuple index out of range"), ("ok", [])]
    assert stored(db) == ["b"]


@pytest.mark.parametrize("cut", [0, 2, LENGTH.size, LENGTH.size + 3], ids=["empty", "head", "body", "part"])
def test_the_writer_stops_at_the_end_of_its_input_even_in_the_middle_of_a_frame(
    db: sqlite3.Connection, cut: int
) -> None:
    whole = frames(([as_row(worker("a"))], {}))
    out = io.BytesIO()
    serve(db, io.BytesIO(whole[:cut]), out)
    assert (out.getvalue(), stored(db)) == (b"", [])


def test_main_opens_the_file_ignores_interrupts_and_serves_its_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: sqlite3.Connection
) -> None:
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(frames(([as_row(worker("a"))], {})))))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    handlers = {
        signal.SIGINT: signal.getsignal(signal.SIGINT),
        signal.SIGTERM: signal.getsignal(signal.SIGTERM),
    }
    try:
        main([str(tmp_path / "registry.db"), "FULL", "100"])
        ignored = {sig: signal.getsignal(sig) for sig in handlers}
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert ignored == {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}
    said = out.getvalue()
    assert said.startswith(READY)  # once the file is open
    assert replies(said[len(READY) :]) == [("ok", [])]
    assert stored(db) == ["a"]


# -- the store's writer, a process ----------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """Exited, if not yet reaped (a writer whose scheduler died is reaped by whoever adopts it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteRegistryStore]:
    opened = await SqliteRegistryStore.open(tmp_path / "registry.db")
    yield opened
    await opened.close()


@dataclass
class Held:
    """A store whose writes wait for the file's lock (30 s), and another connection to the file that holds it."""

    store: SqliteRegistryStore
    other: sqlite3.Connection

    async def sent(
        self, records: list[WorkerRecord]
    ) -> asyncio.Task[list[tuple[UpsertOutcome, WorkerRecord]]]:
        """Take the lock and write ``records``: the write, once its group is with the writer and held there."""
        tried = self.store._registrations.groups
        self.other.execute("BEGIN IMMEDIATE")
        writing = asyncio.create_task(self.store.upsert(records))
        # The group's frame is sent in the same step as it is counted as tried.
        await wait_until(lambda: self.store._registrations.groups == tried + 1, timeout=10)
        return writing

    def let_go(self) -> None:
        self.other.execute("ROLLBACK")


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[Held]:
    store = await SqliteRegistryStore.open(tmp_path / "registry.db", busy_timeout=30)
    other = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    yield Held(store, other)
    other.close()
    await store.close()


async def test_registrations_are_written_by_a_process_of_the_stores_own_which_ends_with_it(
    tmp_path: Path,
) -> None:
    store = await SqliteRegistryStore.open(tmp_path / "registry.db")
    pid = store.writer_pid
    assert pid is not None and pid != os.getpid()
    assert psutil.Process(pid).ppid() == os.getpid()
    assert await store.upsert([worker("a")]) == [(UpsertOutcome.CREATED, worker("a"))]
    await store.close()
    assert (store.writer_pid, psutil.pid_exists(pid)) == (None, False)  # exited and reaped
    with pytest.raises(StoreUnavailable, match="is closed"):
        await store.upsert([worker("b")])
    assert store.writer_pid is None  # a closed store starts no writer


async def test_a_writer_that_does_not_exit_when_its_store_closes_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "STOP_TIMEOUT", 0.2)
    store = await SqliteRegistryStore.open(tmp_path / "registry.db")
    pid = store.writer_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # frozen: it cannot read the end of its input
    await asyncio.wait_for(store.close(), 10)
    assert not psutil.pid_exists(pid)


async def test_a_writer_that_cannot_open_the_file_is_told_at_start(tmp_path: Path) -> None:
    writer = WriterProcess(
        tmp_path / "no such directory" / "registry.db", synchronous="FULL", busy_timeout_ms=100
    )
    with pytest.raises(StoreUnavailable, match=r"the registry store's writer did not start \(exit code 1\)"):
        await writer.start()
    assert writer.pid is None
    await writer.close()


async def test_a_writer_that_does_not_say_it_started_in_time_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sqlite_writer,
        "COMMAND",
        "import time; time.sleep(600)",  # it never says READY
    )
    monkeypatch.setattr(sqlite_writer, "START_TIMEOUT", 0.3)
    writer = WriterProcess(tmp_path / "registry.db", synchronous="FULL", busy_timeout_ms=100)
    before = psutil.Process().children()
    starting = asyncio.create_task(writer.start())
    await wait_until(lambda: any(child not in before for child in psutil.Process().children()), timeout=10)
    [hung] = [child for child in psutil.Process().children() if child not in before]
    # The store's busy timeout (0.1 s) is added: opening the file may wait that long for another's lock.
    with pytest.raises(
        StoreUnavailable, match=r"the registry store's writer did not start in 0\.4 s \(killed\)$"
    ):
        await starting
    assert writer.pid is None
    await asyncio.wait_for(writer.close(), 10)  # reaps it (a writer left alive would hold this up)
    assert not psutil.pid_exists(hung.pid)


async def test_a_writer_that_cannot_start_is_tried_again_only_after_a_delay_that_doubles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "COMMAND", "raise SystemExit(3)")
    monkeypatch.setattr(sqlite_writer, "RESTART_DELAYS", (1.0, 3.0))
    clock = FakeClock()
    writer = WriterProcess(tmp_path / "registry.db", synchronous="FULL", busy_timeout_ms=100, clock=clock)
    failed = "the registry store's writer did not start \\(exit code 3\\)"

    async def start_at(now: float) -> str:
        clock.now = now
        with pytest.raises(StoreUnavailable) as told:
            await writer.start()
        return told.value.message

    # (when, what it is told): a start is tried at 0, 1, 3 and 6 (delays 1, 2, then 3 at most); not between.
    for now, later in [
        (0.0, None),
        (0.5, 0.5),
        (1.0, None),
        (2.5, 0.5),
        (3.0, None),
        (5.9, 0.1),
        (6.0, None),
    ]:
        message = await start_at(now)
        assert re.fullmatch(
            failed + ("" if later is None else f"; the next start is tried in {later} s"), message
        )
    assert (
        await start_at(6.0)
        == "the registry store's writer did not start (exit code 3); the next start is tried in 3.0 s"
    )

    await writer.close()


DIES_AT_ITS_FIRST_FRAME = (
    "import sys; sys.stdout.buffer.write(bytes(4)); sys.stdout.buffer.flush(); sys.stdin.buffer.read(4); "
    "raise SystemExit(4)"
)  # it says READY, then exits as the first frame arrives


async def test_a_writer_that_dies_before_its_first_answer_is_started_again_only_after_a_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: sqlite3.Connection
) -> None:
    answers = sqlite_writer.COMMAND
    monkeypatch.setattr(sqlite_writer, "RESTART_DELAYS", (1.0, 3.0))
    clock = FakeClock()
    writer = WriterProcess(tmp_path / "registry.db", synchronous="FULL", busy_timeout_ms=100, clock=clock)
    stopped = "the registry store's writer stopped (exit code 4)"
    # Twice: a writer that answered once resets the delay, so the second round waits 1 s again, not 2.
    for attempt in range(2):
        monkeypatch.setattr(sqlite_writer, "COMMAND", DIES_AT_ITS_FIRST_FRAME)
        told = []
        for _ in range(2):
            with pytest.raises(StoreUnavailable) as error:
                await writer.register([worker(f"w-{attempt}")])
            told.append(error.value.message)
        assert told == [stopped, f"{stopped}; the next start is tried in 1.0 s"]
        clock.advance(1.0)
        monkeypatch.setattr(sqlite_writer, "COMMAND", answers)
        assert await writer.register([worker(f"w-{attempt}")]) == [
            (UpsertOutcome.CREATED, worker(f"w-{attempt}"))
        ]
        writer._end()
    await writer.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_the_writer_outlives_an_interrupt_and_a_terminate(
    store: SqliteRegistryStore, sig: signal.Signals
) -> None:
    await store.upsert([worker("a")])  # the writer is up, its handlers set
    pid = store.writer_pid
    assert pid is not None
    os.kill(pid, sig)
    assert await store.upsert([worker("b")]) == [(UpsertOutcome.CREATED, worker("b"))]
    assert store.writer_pid == pid


async def test_a_writer_killed_in_a_group_fails_that_group_and_the_next_group_starts_another(
    held: Held,
) -> None:
    store = held.store
    await store.upsert([worker("before")])
    first = store.writer_pid
    assert first is not None
    during = await held.sent([worker("during")])
    os.kill(first, signal.SIGKILL)
    with pytest.raises(StoreUnavailable, match=r"the registry store's writer stopped \(exit code -9\)"):
        await during
    held.let_go()
    assert await store.upsert([worker("after")]) == [(UpsertOutcome.CREATED, worker("after"))]
    assert store.writer_pid not in (None, first)
    assert [r.worker_id for r in await store.list(WorkerFilter())] == ["after", "before"]


async def test_a_writer_that_died_idle_is_replaced_before_the_next_group(store: SqliteRegistryStore) -> None:
    first = store.writer_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await wait_until(lambda: store.writer_pid is None, timeout=10)  # its exit is known
    assert await store.upsert([worker("after")]) == [(UpsertOutcome.CREATED, worker("after"))]
    assert store.writer_pid not in (None, first)


async def test_closing_the_store_lets_the_group_its_writer_holds_commit(held: Held) -> None:
    store = held.store
    holding = await held.sent([worker("held")])
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    held.let_go()
    async with asyncio.timeout(10):
        assert await holding == [(UpsertOutcome.CREATED, worker("held"))]
        await closing
    reopened = await SqliteRegistryStore.open(store.path)
    try:
        assert await reopened.get("held") == worker("held")
    finally:
        await reopened.close()


async def test_a_group_that_fails_in_the_writer_is_tried_caller_by_caller(
    held: Held,
) -> None:
    store = held.store
    await store.upsert([worker("bad")])
    held.other.execute("UPDATE workers SET labels = '{' WHERE worker_id = 'bad'")  # a damaged row
    first = await held.sent([worker("first")])
    group = [asyncio.create_task(store.upsert([w])) for w in (worker("x"), worker("bad", 2), worker("y"))]
    await asyncio.sleep(0)
    held.let_go()
    async with asyncio.timeout(10):
        assert await first == [(UpsertOutcome.CREATED, worker("first"))]
        x, bad, y = await asyncio.gather(*group, return_exceptions=True)
    assert (x, y) == ([(UpsertOutcome.CREATED, worker("x"))], [(UpsertOutcome.CREATED, worker("y"))])
    assert isinstance(bad, StoreError) and not isinstance(bad, StoreUnavailable)
    assert str(bad).startswith("the registry store cannot write this group (JSONDecodeError: ")
    assert store._registrations.groups == 6  # tried: before, first, the group, then each of its three alone
    assert store.registration_transactions == 4  # committed: all but the group and "bad" alone
    assert store.writer_pid is not None


async def test_a_group_cancelled_while_it_waits_for_its_answer_ends_that_writer_and_the_next_group_starts_another(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    store = await SqliteRegistryStore.open(path, busy_timeout=30)
    writer = WriterProcess(path, synchronous="FULL", busy_timeout_ms=30_000)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await writer.start()
        first = writer.pid
        assert first is not None
        other.execute("BEGIN IMMEDIATE")  # the writer's transaction waits for this lock
        waiting = asyncio.create_task(writer.register([worker("a")]))
        await asyncio.sleep(0)  # it sent its frame and waits for the answer, which the lock holds back
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await wait_until(lambda: not psutil.pid_exists(first), timeout=10)
        other.execute("ROLLBACK")
        assert await writer.register([worker("b")]) == [(UpsertOutcome.CREATED, worker("b"))]
        assert writer.pid not in (None, first)
        assert [r.worker_id for r in await store.list(WorkerFilter())] == ["b"]
    finally:
        other.close()
        await writer.close()
        await store.close()


async def test_the_writers_answers_reach_the_caller_as_the_stores_errors(store: SqliteRegistryStore) -> None:
    await store.upsert([bound("holder", "job-1")])
    with pytest.raises(JobAlreadyBound) as refused:
        await store.upsert([bound("second", "job-1")])
    assert refused.value.job_id == "job-1"
    with pytest.raises(StoreRefusedData, match=r"cannot hold this data \(OverflowError\)"):
        await store.upsert([worker("big", 2**63)])
    assert await store.count() == 1


def test_a_writer_whose_scheduler_was_killed_exits(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from hodei.stores._sqlite import SqliteRegistryStore\n"
        "async def main():\n"
        f"    store = await SqliteRegistryStore.open({str(tmp_path / 'registry.db')!r})\n"
        "    print(store.writer_pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    scheduler = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert scheduler.stdout is not None
        writer = int(scheduler.stdout.readline())
        assert psutil.Process(writer).ppid() == scheduler.pid
    finally:
        scheduler.kill()
        scheduler.wait()
    asyncio.run(wait_until(lambda: gone(writer), timeout=10))
