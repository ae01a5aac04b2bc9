"""A throw-away PostgreSQL cluster on a free loopback port, for tests.

::

    with PostgresCluster() as cluster:          # initdb + pg_ctl start, in a fresh temporary directory
        dsn = cluster.create_database("orders")  # postgresql://postgres@127.0.0.1:<port>/orders
        ...
    # stopped (immediate shutdown) and its directory removed

The cluster trusts every local connection (``initdb -A trust``) and listens on 127.0.0.1 only, with its Unix
socket inside its own directory. ``fsync`` keeps its default (on), so that throughput measured against it is
honest; only initdb skips syncing the files it writes. PostgreSQL refuses to run as root: when the tests run as
root, the server runs as the ``postgres`` OS user (through ``runuser``), which owns the cluster's directory.

The binaries are looked up on ``PATH``, then in the newest ``/usr/lib/postgresql/*/bin`` (Debian's layout,
which does not put ``initdb`` on ``PATH``). :func:`missing_postgres` says what is missing, for a skip message.
Nothing here imports a database driver: databases are created with ``psql``, so every method is synchronous
and works the same from sync and async code.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from hodei._infra.directories import free_loopback_port, log_tail, private_directory, running_as_root

__all__ = ["PostgresCluster", "PostgresClusterError", "find_postgres_tool", "missing_postgres"]

POSTGRES_OS_USER = "postgres"
"""The OS user the server runs as when the tests run as root."""

_TOOLS = ("initdb", "pg_ctl", "psql")
_DEBIAN_BIN_DIRS = "/usr/lib/postgresql/*/bin"
_PORT_ATTEMPTS = 5
_START_TIMEOUT = 30  # seconds pg_ctl waits for the server to accept connections


class PostgresClusterError(RuntimeError):
    """The cluster could not be created, started, stopped or used; ``log_tail`` is the end of the server log."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- server log (tail) ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    version = bin_dir.parent.name
    return tuple(int(part) for part in version.split(".")) if re.fullmatch(r"\d+(\.\d+)*", version) else ()


def find_postgres_tool(name: str) -> Path | None:
    """The path of a PostgreSQL program (``initdb``, ``pg_ctl``, ``psql``...), or None if it is nowhere."""
    on_path = shutil.which(name)
    if on_path is not None:
        return Path(on_path)
    bin_dirs = sorted(Path("/").glob(_DEBIAN_BIN_DIRS.lstrip("/")), key=_version_key, reverse=True)
    for bin_dir in bin_dirs:
        candidate = bin_dir / name
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_postgres() -> str | None:
    """What keeps a :class:`PostgresCluster` from starting here, in words for a skip message; None if nothing."""
    missing = [name for name in _TOOLS if find_postgres_tool(name) is None]
    if missing:
        return (
            f"{', '.join(missing)} not found on PATH or in {_DEBIAN_BIN_DIRS}; install Debian's postgresql "
            "package (tools/ensure-postgres.sh does it when run as root)"
        )
    if running_as_root():
        try:
            pwd.getpwnam(POSTGRES_OS_USER)
        except KeyError:
            return f"running as root, and there is no {POSTGRES_OS_USER!r} OS user to run the server as"
        if shutil.which("runuser") is None:
            return (
                "running as root, and runuser (util-linux) is not on PATH to run the server as another user"
            )
    return None


def _tool(name: str) -> str:
    path = find_postgres_tool(name)
    if path is None:
        raise PostgresClusterError(missing_postgres() or f"{name} not found")
    return str(path)


class PostgresCluster:
    """A private PostgreSQL cluster: ``start()`` creates and starts it, ``stop()`` stops and deletes it.

    ``directory`` (default: a new temporary directory) must not exist yet or be empty; it holds the data, the
    server log and the Unix socket, and ``stop()`` removes it. When running as root, the ``postgres`` user must
    be able to reach it (pytest's ``tmp_path`` sits under a directory private to root; ``/tmp`` is fine).
    ``port`` (default: a free loopback port, picked again if another process takes it first) is the TCP port
    on 127.0.0.1.
    """

    def __init__(self, directory: Path | None = None, *, port: int | None = None) -> None:
        self._requested_directory = directory
        self._requested_port = port
        self._directory: Path | None = None
        self._port: int | None = None
        self._started = False
        self._stopped = False

    @property
    def directory(self) -> Path:
        """The cluster's directory (data in ``data/``, log in ``server.log``); known once started."""
        if self._directory is None:
            raise PostgresClusterError("the cluster has not been started")
        return self._directory

    @property
    def port(self) -> int:
        """The TCP port the server listens on, on 127.0.0.1; known once started."""
        if self._port is None:
            raise PostgresClusterError("the cluster has not been started")
        return self._port

    @property
    def dsn(self) -> str:
        """The DSN of the ``postgres`` database, as superuser ``postgres``."""
        return self.dsn_for("postgres")

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    @property
    def _data_dir(self) -> Path:
        return self.directory / "data"

    def dsn_for(self, database: str) -> str:
        """The DSN of ``database`` on this cluster (which need not exist yet)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(database, safe='')}"

    def start(self) -> PostgresCluster:
        """initdb into the directory and start the server; returns when it accepts connections.

        Raises :class:`PostgresClusterError` (with the tail of the server log) if it cannot; a second start,
        or a start after stop, is an error too.
        """
        if self._started:
            raise PostgresClusterError("a PostgresCluster is started once; create another one")
        self._started = True
        self._directory = self._make_directory()
        try:
            self._initdb()
            self._start_server()
        except BaseException:
            self._stopped = True
            try:
                self._stop_server()  # pg_ctl may have given up waiting on a server that is still starting
            finally:
                self._remove_directory()
            raise
        return self

    def stop(self) -> None:
        """Stop the server at once (``pg_ctl -m immediate``) and remove its directory. Idempotent."""
        if not self._started or self._stopped:
            return
        self._stopped = True
        try:
            self._stop_server()
        finally:
            self._remove_directory()

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its DSN."""
        self.execute(f"CREATE DATABASE {_identifier(name)}")
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, closing any connection still open to it."""
        self.execute(f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)")

    def execute(self, sql: str, *, database: str = "postgres") -> str:
        """Run ``sql`` with psql as superuser and return what it printed (unaligned, tuples only)."""
        command = [
            _tool("psql"),
            *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql),
        ]
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=60)
        if result.returncode != 0:
            raise PostgresClusterError(f"psql failed on {sql!r}: {result.stderr.strip()}")
        return result.stdout

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"port={self._port}" if self._started else "not started"
        return f"PostgresCluster({state})"

    # -- internals

    def _make_directory(self) -> Path:
        directory = private_directory(
            self._requested_directory, prefix="hodei-postgres-", error=PostgresClusterError
        )
        if running_as_root():
            user = pwd.getpwnam(POSTGRES_OS_USER)
            os.chown(directory, user.pw_uid, user.pw_gid)
        return directory

    def _run_as_server_user(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        if running_as_root():
            command = ["runuser", "-u", POSTGRES_OS_USER, "--", *command]
        # The server's user may not be able to enter the caller's working directory (/root, say).
        return subprocess.run(
            command,
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            timeout=_START_TIMEOUT + 30,
        )

    def _initdb(self) -> None:
        result = self._run_as_server_user(
            [
                _tool("initdb"),
                *("-D", str(self._data_dir), "-A", "trust", "-U", "postgres"),
                *("--no-sync", "-E", "UTF8", "--locale=C"),
            ]
        )
        if result.returncode != 0:
            raise PostgresClusterError(f"initdb failed:\n{result.stdout.strip()}")

    def _start_server(self) -> None:
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_loopback_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} "
                f"-c unix_socket_directories={shlex.quote(str(self.directory))} -c max_connections=200"
            )
            result = self._run_as_server_user(
                [
                    _tool("pg_ctl"),
                    *("start", "-w", "-t", str(_START_TIMEOUT), "-D", str(self._data_dir)),
                    *("-l", str(self.log_path), "-o", options),
                ]
            )
            if result.returncode == 0:
                self._port = port
                return
            tail = log_tail(self.log_path)
            port_taken = "could not bind" in tail or "already in use" in tail
            if not port_taken or attempt == attempts:
                raise PostgresClusterError(
                    f"the PostgreSQL server did not start on 127.0.0.1:{port}: {result.stdout.strip()}",
                    log_tail=tail,
                )
            # Another process took the port between our probe and the server's bind: try another one.
            self.log_path.unlink(missing_ok=True)

    def _stop_server(self) -> None:
        pid_file = self._data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        result = self._run_as_server_user(
            [_tool("pg_ctl"), "stop", "-D", str(self._data_dir), "-m", "immediate", "-w"]
        )
        if result.returncode != 0 and pid_file.exists():
            raise PostgresClusterError(
                f"pg_ctl stop failed: {result.stdout.strip()}", log_tail=log_tail(self.log_path)
            )

    def _remove_directory(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
