"""What an operator meets first with the ``hodei`` command: errors and help that no terminal width or path length
can cut or wrap, addresses checked before anything starts, one scheduler per port and per registry file."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from hodei import SchedulerPortClient
from hodei.testing import EmbeddedScheduler, FailingScheduler
from tests.helpers import free_port, make_worker
from tests.integration.helpers import CLI_ENV, HODEI, end, run_hodei, scheduler_serve


@pytest.mark.parametrize("columns", ["40", "60", "120"])
async def test_a_usage_error_is_one_line_on_stderr_whatever_the_path_length_and_the_columns(
    tmp_path: Path, columns: str
) -> None:
    deep = tmp_path / ("d" * 150) / ("e" * 150)
    deep.mkdir(parents=True)
    bogus = deep / "bogus.pem"
    bogus.write_text("nothing here")

    listed = await run_hodei("workers", "list", "--tls-ca", str(bogus), env={"COLUMNS": columns})

    assert listed.returncode == 2
    assert listed.stderr == (
        "hodei workers list: error: Invalid value for --tls-ca/--tls-cert/--tls-key: "
        f"ca_file: {bogus} holds no PEM certificate (see 'hodei workers list --help')\n"
    )
    assert listed.stdout == ""


async def test_an_unknown_option_is_one_line_naming_it() -> None:
    listed = await run_hodei("workers", "list", "--bogus")

    assert (listed.returncode, listed.stderr) == (
        2,
        "hodei workers list: error: No such option: --bogus (see 'hodei workers list --help')\n",
    )


@pytest.mark.parametrize("columns", ["", "40"])
async def test_help_without_a_terminal_shows_every_option_whole(columns: str) -> None:
    helped = await run_hodei("scheduler", "serve", "--help", env={"COLUMNS": columns} if columns else None)

    assert helped.returncode == 0, helped
    assert "--mass-expiry-threshold" in helped.stdout
    assert "…" not in helped.stdout
    assert "╭" not in helped.stdout + helped.stderr


# --- one scheduler per port, one per registry file ---------------------------------------------------------


async def test_a_second_scheduler_on_a_port_in_use_exits_1_with_one_line_and_the_first_keeps_it() -> None:
    async with scheduler_serve("--store", "memory") as first:
        second = await run_hodei("scheduler", "serve", "--store", "memory", "--listen", first.target)
        async with SchedulerPortClient(first.target) as client:
            await client.register_worker(make_worker("still-the-first"))
            listed = [(await client.list_workers(timeout=5)).workers for _ in range(6)]

    assert (second.returncode, second.stdout) == (1, "")
    assert second.stderr == (
        f"hodei scheduler: cannot listen on {first.target}: the address is in use (another scheduler?)\n"
    )
    assert [[w.worker_id for w in page] for page in listed] == [["still-the-first"]] * 6


async def test_a_scheduler_server_binds_its_port_without_so_reuseport() -> None:
    async with EmbeddedScheduler() as first:
        intruder = grpc.aio.server()  # gRPC's default: SO_REUSEPORT on
        try:
            with pytest.raises(RuntimeError, match="Failed to bind"):
                intruder.add_insecure_port(first.target)
        finally:
            await intruder.stop(None)


async def test_a_second_scheduler_on_a_sqlite_file_in_use_exits_1_naming_the_file_and_the_holders_pid(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    async with scheduler_serve("--store", f"sqlite:///{path}") as first:
        second = await run_hodei(
            "scheduler", "serve", "--store", f"sqlite:///{path}", "--listen", f"127.0.0.1:{free_port()}"
        )
        async with SchedulerPortClient(first.target) as client:
            await client.register_worker(make_worker("kept"))
        stopped = await first.stop()

    assert (second.returncode, second.stdout) == (1, "")
    assert second.stderr == (
        f"hodei scheduler: cannot open the registry store: {path} is in use by another scheduler "
        f"(PID {first.process.pid}, holding {path}.lock): a SQLite registry serves one scheduler; stop that one, "
        "or give this one another --store (several replicas share a PostgreSQL store)\n"
    )
    assert stopped.returncode == 0, stopped.stderr
    # The lock went with the first: a restart on the file works, and finds its workers.
    async with (
        scheduler_serve("--store", f"sqlite:///{path}") as restarted,
        SchedulerPortClient(restarted.target) as client,
    ):
        assert await client.get_worker("kept", timeout=5) is not None


# --- addresses checked before anything starts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("scheduler", "serve", "--listen", "127.0.0.1"),
            "hodei scheduler serve: error: Invalid value for '--listen': '127.0.0.1' has no port: expected "
            "HOST:PORT (see 'hodei scheduler serve --help')",
        ),
        (
            ("scheduler", "serve", "--listen", "127.0.0.1:99999"),
            "hodei scheduler serve: error: Invalid value for '--listen': '127.0.0.1:99999' is not HOST:PORT: "
            "port 99999 is out of range (0-65535) (see 'hodei scheduler serve --help')",
        ),
        (
            ("scheduler", "serve", "--listen", ":99999"),
            "hodei scheduler serve: error: Invalid value for '--listen': ':99999' has no host: expected "
            "HOST:PORT (127.0.0.1, 0.0.0.0, [::1], ...) (see 'hodei scheduler serve --help')",
        ),
        (
            ("workers", "list", "-s", "127.0.0.1"),
            "hodei workers list: error: Invalid value for '--scheduler' / '-s': scheduler address '127.0.0.1' "
            "has no port: expected HOST:PORT (see 'hodei workers list --help')",
        ),
        (
            ("agent", "-s", "127.0.0.1"),
            "hodei agent: error: Invalid value for '--scheduler' / '-s' (env var: 'HODEI_SCHEDULER'): "
            "scheduler address '127.0.0.1' has no port: expected HOST:PORT (see 'hodei agent --help')",
        ),
        (
            ("agent", "-s", "127.0.0.1:70000"),
            "hodei agent: error: Invalid value for '--scheduler' / '-s' (env var: 'HODEI_SCHEDULER'): "
            "scheduler address '127.0.0.1:70000': port 70000 is out of range (see 'hodei agent --help')",
        ),
    ],
)
async def test_an_address_without_a_port_or_with_one_out_of_range_is_refused_naming_the_option(
    args: tuple[str, ...], message: str
) -> None:
    refused = await run_hodei(*args, timeout=15)

    assert (refused.returncode, refused.stdout, refused.stderr) == (2, "", message + "\n")


# --- hodei workers watch without a terminal ----------------------------------------------------------------


@pytest.mark.parametrize("signal_sent", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("as_json", [False, True])
async def test_workers_watch_through_a_pipe_prints_one_flushed_line_per_event_and_exits_0_on_a_signal(
    as_json: bool, signal_sent: signal.Signals
) -> None:
    async with scheduler_serve("--store", "memory") as served, SchedulerPortClient(served.target) as client:
        await client.register_worker(make_worker("before-the-watch"))
        watch = await asyncio.create_subprocess_exec(
            HODEI, "workers", "watch", "-s", served.target, *(("--json",) if as_json else ()),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
        )  # fmt: skip
        try:
            assert watch.stdout is not None
            snapshot = (await asyncio.wait_for(watch.stdout.readline(), 20)).decode()
            await client.unregister_worker("before-the-watch")
            unregistered = (await asyncio.wait_for(watch.stdout.readline(), 20)).decode()
            watch.send_signal(signal_sent)
            rest, stderr = await asyncio.wait_for(watch.communicate(), 15)
        finally:
            await end(watch)

    assert (watch.returncode, rest, stderr) == (0, b"", b"")
    if as_json:
        first, second = json.loads(snapshot), json.loads(unregistered)
        assert {k: first[k] for k in ("kind", "worker_id", "status")} == {
            "kind": "snapshot",
            "worker_id": "before-the-watch",
            "status": "available",
        }
        assert (second["kind"], second["worker_id"], second["status"]) == (
            "unregistered",
            "before-the-watch",
            None,
        )
        assert second["sequence"] > first["sequence"]
    else:
        assert re.fullmatch(r"\S+ #\d+ snapshot before-the-watch available.*\n", snapshot), snapshot
        assert re.fullmatch(r"\S+ #\d+ unregistered before-the-watch -\n", unregistered), unregistered


async def test_workers_watch_of_a_dead_address_fails_at_once_without_drawing_anything() -> None:
    nowhere = f"127.0.0.1:{free_port()}"

    watched = await run_hodei("workers", "watch", "-s", nowhere, timeout=10)

    assert (watched.returncode, watched.stdout) == (1, "")
    [line] = watched.stderr.splitlines()
    assert line.startswith("error: UNAVAILABLE: "), line


# --- logs: console on a terminal, JSON otherwise -----------------------------------------------------------


def read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """What ``fd`` gives until ``wanted`` appears in it; fails after ``timeout`` seconds."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} not seen within {timeout} s: {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)
    return seen


@pytest.mark.parametrize("terminal", [True, False])
def test_scheduler_logs_are_console_text_on_a_terminal_and_json_otherwise(terminal: bool) -> None:
    controller, attached = pty.openpty() if terminal else os.pipe()
    process = subprocess.Popen(
        [HODEI, "scheduler", "serve", "--store", "memory", "--listen", f"127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL,
        stderr=attached,
        env=CLI_ENV,
    )
    os.close(attached)
    try:
        seen = read_until(controller, b"scheduler.started", timeout=20)
    finally:
        process.kill()
        process.wait(15)
        os.close(controller)

    [line] = [text for text in seen.decode().splitlines() if "scheduler.started" in text]
    if terminal:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)  # the console's colours
        assert re.fullmatch(
            r"\S+Z \[info +\] scheduler\.started .*address=127\.0\.0\.1:\d+.*", plain.strip()
        ), plain
    else:
        assert json.loads(line)["event"] == "scheduler.started"


# --- hodei demo --hold -------------------------------------------------------------------------------------


async def test_a_worker_killed_during_the_demos_hold_fails_its_summary() -> None:
    demo = await asyncio.create_subprocess_exec(
        HODEI, "demo", "--workers", "2", "--hold", "4",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        printed = ""
        async with asyncio.timeout(60):
            while "holding" not in printed:
                line = (await demo.stdout.readline()).decode()
                assert line, f"the demo ended before its hold: {printed}"
                printed += line
        holding = printed.splitlines()[-1]
        found = re.search(r"\(([^=\s]+)=(\d+), ", holding)
        assert found is not None, holding
        victim, pid = found.group(1), int(found.group(2))
        os.kill(pid, signal.SIGKILL)  # an agent the demo started for this test
        rest, _ = await asyncio.wait_for(demo.communicate(), 60)
    finally:
        await end(demo)

    assert demo.returncode == 1
    assert f"watch with `{HODEI} workers watch --scheduler 127.0.0.1:" in holding
    after = rest.decode()
    assert f"   died during the hold: {victim}\n" in after, after
    assert re.search(
        r"^summary FAILED: 2 provisioned, 2 AVAILABLE and heartbeating, 1 died during the hold, 2 decommissioned, "
        r"0 orphans$",
        after,
        re.MULTILINE,
    ), after


# --- hodei bench -------------------------------------------------------------------------------------------


async def test_bench_prints_its_progress_and_table_with_the_runs_warnings_summarised_after_it(
    tmp_path: Path,
) -> None:
    async with FailingScheduler(3) as failing:  # three retries: three registration.retrying warnings
        bench = await run_hodei(
            "bench", "--quick", "--scenario", "sequential", "--target", failing.target,
            timeout=120, env={"TMPDIR": str(tmp_path)},
        )  # fmt: skip

    assert bench.returncode == 0, bench
    # Progress on stderr, then the summary of what was logged; no log line in between.
    [progress, summary] = bench.stderr.splitlines()
    assert progress.startswith("sequential "), progress
    [name] = [n for n in await asyncio.to_thread(os.listdir, tmp_path) if n.startswith("hodei-bench-")]
    log_file = tmp_path / name
    assert summary == f"logged during the run: 3 registration.retrying (in {log_file})"
    logged = await asyncio.to_thread(log_file.read_text)
    assert [json.loads(line)["event"] for line in logged.splitlines()] == ["registration.retrying"] * 3
    assert "hodei registration benchmark" in bench.stdout
    assert "registration.retrying" not in bench.stdout
