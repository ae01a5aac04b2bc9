"""The SQLite store's writer: a process of its own that writes the store's registrations, one group at a time.

Why a process. The store's thread shares the scheduler's GIL with the event loop: the sqlite3 module lets go
of it for each step of a statement (``BEGIN``, the read, the write, ``COMMIT``), and under load the thread
then waits the interpreter's switch interval (5 ms) to get it back, after every step. A group's transaction
of about a millisecond took tens, and the callers in it waited that long. Measured with 500 registrations in
flight (``hodei bench``, seven alternating pairs, a prototype of this writer against the thread, both
gathering as the store then did): the p95 ratio to the raw baseline was at most 1.43 in each of the seven
with the writer (median 1.31), against 1.15 to 2.35 on the thread (median 1.44, two above 1.5); the
throughput ratio had the same median, 0.770 against 0.763. Larger groups (:data:`~hodei.stores._sqlite.GATHER`)
gain more with the writer than on the thread.

The two ends speak over the child's stdin and stdout, one exchange at a time: a frame (a 4-byte length, then a
pickle) with the rows (:func:`~hodei.stores._sqlite_schema.as_row`) of a group's records and the jobs that
those which say so run (not stored, but a registration keeps its job by them), and a frame back once its
transaction committed, or failed. The writer merges the records against the stored rows in the
transaction, as every store does (:func:`~hodei.domain.merge_registrations`), and answers with the stored rows
it read; the scheduler merges its own records against them again, which gives the same outcomes, without the
records themselves crossing back.

The writer ignores SIGINT and SIGTERM, in a session of its own: it stops when the scheduler closes its stdin
(after the last group committed) or dies, and never in the middle of a group because a terminal or a service
manager signalled everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import sqlite3
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, NamedTuple

from hodei._quoting import clip
from hodei.domain import UpsertOutcome, WorkerRecord, merge_registrations
from hodei.errors import JobAlreadyBound, StoreError, StoreRefusedData, StoreUnavailable
from hodei.stores._bound import job_of
from hodei.stores._rows import COLUMNS
from hodei.stores._sqlite_schema import (
    DRIVER_ERRORS,
    STATEMENT_CACHE,
    as_row,
    bind_jobs,
    by_worker_id,
    configure,
    driver_error,
    fetch_rows,
    record,
    upsert_rows,
)

__all__ = ["WriterProcess", "main", "register_rows", "serve"]

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
_JOB_ID = COLUMNS.index("job_id")

READY = _LENGTH.pack(0)
"""What the writer says first, once its connection is open: an empty frame."""

Row = tuple[Any, ...]

STOP_TIMEOUT = 10.0
"""Seconds the writer has to exit once its stdin is closed (it has no group then), before it is killed."""

START_TIMEOUT = 30.0
"""Seconds a writer has to open the file and say so (:data:`READY`), beyond the store's busy timeout (opening may
wait for another's lock), before it is killed and the start failed."""

RESTART_DELAYS = (0.25, 10.0)
"""After a start that failed (or a writer that died before its first answer), the seconds before the next try:
the first, doubled at each failure up to the last, until a writer answers. Groups meanwhile are answered
UNAVAILABLE at once, without starting a process."""

COMMAND = "from hodei.stores._sqlite_writer import main; main()"


class _Failure(NamedTuple):
    """Why the last writer did not start, how long the store waits after it, and until when."""

    said: str
    delay: float
    until: float


# -- the writer's end --------------------------------------------------------------------------------------


def register_rows(
    db: sqlite3.Connection, rows: Sequence[Row], running: Mapping[int, tuple[str, ...]] | None = None
) -> list[Row]:
    """Write the registrations of ``rows`` in one transaction, merged against the stored rows; those rows.

    ``running`` gives, by index, what the registrations that said so run (``running_jobs``, not stored)."""
    worker_ids = list({row[0]: None for row in rows})
    db.execute("BEGIN IMMEDIATE")
    try:
        stored = fetch_rows(db, worker_ids)
        if stored or len(worker_ids) < len(rows) or any(row[_JOB_ID] is not None for row in rows):
            _merge(db, rows, running or {}, stored)
        else:  # new workers, each once, bound to no job: the merge would write the rows as they came
            upsert_rows(db, rows)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return stored


def _merge(
    db: sqlite3.Connection, rows: Sequence[Row], running: Mapping[int, tuple[str, ...]], stored: list[Row]
) -> None:
    records = [record(row) for row in rows]
    for index, jobs in running.items():
        records[index] = replace(records[index], running_jobs=jobs)
    current = by_worker_id(stored)
    held = {worker_id: job_of(was) for worker_id, was in current.items()}
    _, written = merge_registrations(current, records)
    bind_jobs(db, held, written)
    upsert_rows(db, [as_row(r) for r in written.values()])


def _answer(db: sqlite3.Connection, frame: tuple[list[Row], dict[int, tuple[str, ...]]]) -> tuple[str, Any]:
    try:
        return "ok", register_rows(db, *frame)
    except JobAlreadyBound as error:
        return "bound", error.job_id
    except DRIVER_ERRORS as error:
        told = driver_error(error)
        return ("refused" if isinstance(told, StoreRefusedData) else "unavailable"), told.message
    except Exception as error:  # a record it cannot merge (a stored row damaged): that group's own failure
        return "failed", f"{type(error).__name__}: {clip(str(error))}"


def serve(db: sqlite3.Connection, inp: IO[bytes], out: IO[bytes]) -> None:
    """Answer each frame of rows on ``inp`` on ``out``, until ``inp`` ends."""
    while (frame := _read_frame(inp)) is not None:
        reply = pickle.dumps(_answer(db, frame), pickle.HIGHEST_PROTOCOL)
        out.write(_LENGTH.pack(len(reply)) + reply)
        out.flush()


def _read_frame(inp: IO[bytes]) -> Any:
    head = inp.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    body = inp.read(length)
    return pickle.loads(body) if len(body) == length else None


def main(argv: Sequence[str] | None = None) -> None:
    """``PATH SYNCHRONOUS BUSY_TIMEOUT_MS``: serve the scheduler on stdin and stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path, synchronous, busy_timeout_ms = sys.argv[1:] if argv is None else argv
    db = sqlite3.connect(path, isolation_level=None, cached_statements=STATEMENT_CACHE)
    try:
        configure(db, synchronous=synchronous, busy_timeout_ms=int(busy_timeout_ms))
        sys.stdout.buffer.write(READY)
        sys.stdout.buffer.flush()
        serve(db, sys.stdin.buffer, sys.stdout.buffer)
    finally:
        db.close()


# -- the scheduler's end -------------------------------------------------------------------------------------


class WriterProcess:
    """The writer of the store at ``path``: started by :meth:`start`, asked by :meth:`register`, one group at
    a time. A writer that died (or was left in the middle of an exchange) is started again at the next group."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        busy_timeout_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._clock = clock
        self._args = [str(path), synchronous, str(busy_timeout_ms)]
        self._start_timeout = START_TIMEOUT + busy_timeout_ms / 1000
        self._process: asyncio.subprocess.Process | None = None
        self._exchange = asyncio.Lock()
        self._ended: list[asyncio.subprocess.Process] = []  # stopped, still to be reaped
        self._closed = False
        self._failed: _Failure | None = None  # the last start that failed, while no writer has answered since
        self._answered = False  # whether the running writer has answered a group yet

    @property
    def pid(self) -> int | None:
        """The running writer's PID (None once it is known to have exited)."""
        process = self._process
        return None if process is None or process.returncode is not None else process.pid

    async def start(self) -> None:
        """Start the writer, and wait until it has opened the file (a writer that cannot is
        :class:`StoreUnavailable`, and the next start is tried only after :data:`RESTART_DELAYS`)."""
        if self._closed:
            raise StoreUnavailable(f"the registry store {self._path} is closed")
        if self._process is not None and self._process.returncode is not None:  # it died while idle
            self._forget()
        if self._process is not None:
            return
        now = self._clock()
        if self._failed is not None and now < self._failed.until:
            left = max(self._failed.until - now, 0.1)
            raise StoreUnavailable(f"{self._failed.said}; the next start is tried in {left:.1f} s")
        try:
            await self._started()
        except StoreUnavailable as error:
            self._not_started(error.message)
            raise
        self._answered = False

    def _not_started(self, said: str) -> None:
        """A writer did not start, or died before its first answer: the next start waits (:data:`RESTART_DELAYS`)."""
        delay = RESTART_DELAYS[0] if self._failed is None else min(self._failed.delay * 2, RESTART_DELAYS[1])
        self._failed = _Failure(said, delay, self._clock() + delay)
        log.warning(
            "store.writer_not_started", extra={"path": str(self._path), "error": said, "retry_in": delay}
        )

    async def _started(self) -> None:
        """One try at starting the writer: :class:`StoreUnavailable` if it exits or is silent at start."""
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # not the working directory's modules: a hodei/ there is not this hodei
                "-c",
                COMMAND,
                *self._args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            raise StoreUnavailable(f"cannot start the registry store's writer ({error})") from error
        self._process = process
        assert process.stdout is not None
        try:
            async with asyncio.timeout(self._start_timeout):
                await process.stdout.readexactly(len(READY))
        except asyncio.IncompleteReadError as error:
            self._forget()
            raise StoreUnavailable(
                f"the registry store's writer did not start (exit code {await process.wait()})"
            ) from error
        except TimeoutError as error:
            self._end()
            raise StoreUnavailable(
                f"the registry store's writer did not start in {self._start_timeout:g} s (killed)"
            ) from error
        except BaseException:
            self._end()
            raise

    async def register(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        """Write ``records`` in one transaction of the writer; each one's outcome, once it committed."""
        running = {index: r.running_jobs for index, r in enumerate(records) if r.running_jobs}
        frame = pickle.dumps(([as_row(r) for r in records], running), pickle.HIGHEST_PROTOCOL)
        async with self._exchange:
            await self.start()
            process = self._process
            assert process is not None and process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(_LENGTH.pack(len(frame)) + frame)
                await process.stdin.drain()
                (length,) = _LENGTH.unpack(await process.stdout.readexactly(_LENGTH.size))
                kind, said = pickle.loads(await process.stdout.readexactly(length))
            except (ConnectionError, asyncio.IncompleteReadError) as error:
                # It died; if it did after its commit, that group is written but told UNAVAILABLE, and its
                # callers' retries are answered as updates.
                self._forget()
                said = f"the registry store's writer stopped (exit code {await process.wait()})"
                if not self._answered:  # one that cannot get through a group is not started again at once
                    self._not_started(said)
                raise StoreUnavailable(said) from error
            except BaseException:  # cancelled in the middle of an exchange: the pipes are out of step
                self._end()
                raise
            self._answered, self._failed = True, None
        if kind == "ok":
            outcomes, _ = merge_registrations(by_worker_id(said), records)
            return outcomes
        if kind == "unavailable":
            log.warning("store.unavailable", extra={"path": str(self._path), "error": said})
        raise _error(kind, said)

    def _end(self) -> None:
        """Kill the writer (in the middle of an exchange, or stopped), and forget it."""
        if self._process is not None and self._process.returncode is None:
            # Not Process.kill(): it polls the child first, and reaping it there would leave asyncio's own
            # wait with no exit code to tell (255).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGKILL)
        self._forget()

    def _forget(self) -> None:
        """Let the writer go (it exited, or was killed): it is reaped at :meth:`close`, with the others."""
        if self._process is not None:
            self._ended = [process for process in self._ended if process.returncode is None]
            self._ended.append(self._process)
            self._process = None

    async def close(self) -> None:
        """Close the writer's stdin and wait for it to exit (killed after :data:`STOP_TIMEOUT` seconds: a writer
        that was stopped, or hangs)."""
        async with self._exchange:
            self._closed = True
            if self._process is not None:
                assert self._process.stdin is not None
                self._process.stdin.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._process.wait()), STOP_TIMEOUT)
                self._end()
            for ended in self._ended:
                await ended.wait()
            self._ended.clear()


def _error(kind: str, said: str) -> StoreError:
    if kind == "bound":
        return JobAlreadyBound(said)
    if kind == "refused":
        return StoreRefusedData(said)
    if kind == "unavailable":
        return StoreUnavailable(said)
    return StoreError(f"the registry store cannot write this group ({said})")
