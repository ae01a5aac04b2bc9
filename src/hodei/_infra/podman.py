"""A private ``podman system service`` for tests: a Docker-API socket that the ``docker`` SDK drives.

::

    with PodmanService() as service:                    # in a fresh temporary directory
        client = docker.DockerClient(base_url=service.url)  # unix:///tmp/hodei-podman-…/podman.sock
        service.podman("import", "rootfs.tar", "localhost/some-image:1")
        ...
    # every container removed, the service stopped, its mounts undone and its directory removed

Everything the service keeps lives in its own directory, so that tests never touch the machine's podman
storage nor another session's: the images and containers (``storage/``, ``--root``), the run state (``run/``,
``--runroot``), podman's own temporary state, volumes, network configs and event log (set in the
``containers.conf`` written there), and the API socket. ``CONTAINERS_CONF`` and ``CONTAINERS_STORAGE_CONF``
point podman at the files written there, which are the configuration that makes Podman work on these machines
(``runc`` as the runtime, ``cgroupfs`` as the cgroup manager, ulimits that a container may set). The storage
driver is ``overlay`` when the kernel allows it in that directory, else ``vfs`` (slower, copies every layer).

The service runs as root (rootless podman needs user namespaces and a systemd session that CI machines lack);
:func:`missing_podman` says what is missing, for a skip message. Containers the tests start should use
``network_mode="host"``: podman's bridge network keeps its address allocations in the machine's
``/var/lib/cni``, outside the private directory.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import docker
import docker.errors
import requests

from hodei._infra._leftovers import mount_points_under, processes_naming
from hodei._infra.directories import log_tail, private_directory, running_as_root

__all__ = ["PodmanService", "PodmanServiceError", "missing_podman"]

_SOCKET_NAME = "podman.sock"
_START_TIMEOUT = 30.0  # seconds the service has to answer GET /_ping
_STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
_POLL_INTERVAL = 0.05
_CLI_TIMEOUT = 300.0  # an import of a few hundred MB takes seconds; a hung podman must not hang the tests
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes, NUL included
# runc is looked up where podman looks for it, which is more than root's PATH may hold.
_RUNTIME_DIRS = ("/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/sbin")

CONTAINERS_CONF_TEMPLATE = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{directory}/events.log"
tmp_dir = "{directory}/tmp"
static_dir = "{directory}/storage/libpod"
volume_path = "{directory}/storage/volumes"

[network]
network_config_dir = "{directory}/networks"
"""
"""The ``containers.conf`` the service runs with; ``{directory}`` is the service's directory."""

STORAGE_CONF_TEMPLATE = """\
[storage]
driver = "{driver}"
graphroot = "{directory}/storage"
runroot = "{directory}/run"
"""
"""The ``storage.conf`` the service runs with: the machine's own (a ``mount_program``, say) does not apply."""


class PodmanServiceError(RuntimeError):
    """The service could not be started, stopped or used; ``log_tail`` is the end of the service's log."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- podman service log (tail) ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


def _find_runc() -> str | None:
    return shutil.which("runc") or shutil.which("runc", path=os.pathsep.join(_RUNTIME_DIRS))


def missing_podman() -> str | None:
    """What keeps a :class:`PodmanService` from starting here, in words for a skip message; None if nothing."""
    missing = [
        name for name, found in (("podman", shutil.which("podman")), ("runc", _find_runc())) if not found
    ]
    if missing:
        return (
            f"{' and '.join(missing)} not found; install Debian's podman and runc packages "
            "(tools/ensure-podman.sh does it when run as root)"
        )
    if not running_as_root():
        return "not root: the tests run podman as root (rootless podman needs user namespaces and a systemd session)"
    return None


class PodmanService:
    """A private ``podman system service``: ``start()`` starts it, ``stop()`` stops it and deletes everything.

    ``directory`` (default: a new temporary directory under ``/tmp``) must not exist yet or be empty, and be
    short enough for a Unix socket path. ``storage_driver`` (default: ``overlay``, or ``vfs`` when overlay does
    not work there) is the containers/storage driver.
    """

    def __init__(self, directory: Path | None = None, *, storage_driver: str | None = None) -> None:
        self._requested_directory = directory
        self._requested_driver = storage_driver
        self._directory: Path | None = None
        self._driver: str | None = None
        self._environment: dict[str, str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False
        self._stopped = False

    @property
    def directory(self) -> Path:
        """The service's directory (storage, run state, configuration, log and socket); known once started."""
        if self._directory is None:
            raise PodmanServiceError("the podman service has not been started")
        return self._directory

    @property
    def socket_path(self) -> Path:
        return self.directory / _SOCKET_NAME

    @property
    def url(self) -> str:
        """The Docker API endpoint, ``unix:///…/podman.sock``: the ``base_url`` of a ``docker.DockerClient``."""
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.directory / "service.log"

    @property
    def storage_driver(self) -> str:
        """``overlay`` or ``vfs``; known once started."""
        if self._driver is None:
            raise PodmanServiceError("the podman service has not been started")
        return self._driver

    @property
    def pid(self) -> int:
        """The process id of ``podman system service``; known once started."""
        if self._process is None:
            raise PodmanServiceError("the podman service has not been started")
        return self._process.pid

    @property
    def environment(self) -> dict[str, str]:
        """The environment podman runs with: the caller's, plus ``CONTAINERS_CONF`` and
        ``CONTAINERS_STORAGE_CONF`` naming the files in the service's directory."""
        if self._environment is None:
            raise PodmanServiceError("the podman service has not been started")
        return dict(self._environment)

    @property
    def podman_command(self) -> list[str]:
        """``podman`` with the options that point it at this service's storage; append a subcommand."""
        return [
            "podman",
            *("--root", str(self.directory / "storage"), "--runroot", str(self.directory / "run")),
            *("--storage-driver", self.storage_driver),
        ]

    def start(self) -> PodmanService:
        """Write the configuration, start the service and return once it answers ``GET /_ping``.

        Raises :class:`PodmanServiceError` (with the tail of the service's log) if it cannot; a second start,
        or a start after stop, is an error too.
        """
        if self._started:
            raise PodmanServiceError("a PodmanService is started once; create another one")
        self._started = True
        self._directory = self._make_directory()
        try:
            self._configure()
            self._start_service()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove every container (by force), stop the service (SIGTERM, then SIGKILL after a deadline), undo the
        mounts left in the directory and remove it. Idempotent.

        Raises :class:`PodmanServiceError` if the directory could not be removed.
        """
        if not self._started or self._stopped:
            return
        self._stopped = True
        try:
            if self._driver is not None:
                self._remove_containers()
        finally:
            self._stop_service()
            self._wait_for_helpers()
            self._unmount_leftovers()
            self._remove_directory()

    def podman(
        self, *args: str, check: bool = True, timeout: float = _CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run the podman CLI on this service's storage and configuration: ``service.podman("import", tar, tag)``.

        Returns the completed process (output as text); with ``check``, a non-zero exit status raises
        :class:`PodmanServiceError` with what podman printed.
        """
        if self._stopped:
            raise PodmanServiceError("the podman service has been stopped")
        return self._run_podman(*args, check=check, timeout=timeout)

    def __enter__(self) -> PodmanService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"url={self.url}" if self._process else "not started"
        return f"PodmanService({state})"

    # -- internals

    def _run_podman(
        self, *args: str, check: bool = True, timeout: float = _CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        command = [*self.podman_command, *args]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, env=self.environment, check=False, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise PodmanServiceError(f"{shlex.join(command)} did not finish within {timeout:g} s") from exc
        if check and result.returncode != 0:
            raise PodmanServiceError(
                f"{shlex.join(command)} exited with status {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def _make_directory(self) -> Path:
        requested = self._requested_directory
        if requested is not None:
            requested = requested.absolute()
            socket_path = requested / _SOCKET_NAME
            if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
                raise PodmanServiceError(f"{socket_path} is too long for a Unix socket; choose a shorter one")
        return private_directory(requested, prefix="hodei-podman-", error=PodmanServiceError)

    def _configure(self) -> None:
        conf = self.directory / "containers.conf"
        conf.write_text(CONTAINERS_CONF_TEMPLATE.format(directory=self.directory))
        self._environment = {
            **os.environ,
            "CONTAINERS_CONF": str(conf),
            "CONTAINERS_STORAGE_CONF": str(self.directory / "storage.conf"),
        }
        drivers = [self._requested_driver] if self._requested_driver else ["overlay", "vfs"]
        refusals: list[str] = []
        for driver in drivers:
            (self.directory / "storage.conf").write_text(
                STORAGE_CONF_TEMPLATE.format(driver=driver, directory=self.directory)
            )
            self._driver = driver
            # Initialising the overlay driver mounts a test overlay in the storage directory: a refusal shows.
            probe = self._run_podman("info", "--format", "{{.Store.GraphDriverName}}", check=False)
            if probe.returncode == 0:
                if refusals:
                    self._append_to_log(f"storage driver {driver}, because {'; '.join(refusals)}\n")
                return
            refusals.append(f"{driver} was refused: {probe.stderr.strip()}")
            self._unmount_leftovers()
            for state in ("storage", "run"):
                shutil.rmtree(self.directory / state, ignore_errors=True)
        self._driver = None
        raise PodmanServiceError(f"no storage driver works in {self.directory}: {'; '.join(refusals)}")

    def _start_service(self) -> None:
        command = [*self.podman_command, "--log-level", "info", "system", "service", "--time", "0", self.url]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                cwd=self.directory,
                start_new_session=True,  # its own process group: a Ctrl-C of the tests does not reach it first
            )
        deadline = time.monotonic() + _START_TIMEOUT
        # A version given up front: otherwise the client asks the server for it on construction.
        client = docker.DockerClient(base_url=self.url, version="1.41", timeout=5)
        try:
            self._wait_for_ping(client, deadline)
        finally:
            client.close()

    def _wait_for_ping(self, client: docker.DockerClient, deadline: float) -> None:
        assert self._process is not None
        while not self._answers_ping(client):
            if self._process.poll() is not None:
                raise PodmanServiceError(
                    f"podman system service exited with status {self._process.returncode} before it answered",
                    log_tail=log_tail(self.log_path),
                )
            if time.monotonic() > deadline:
                raise PodmanServiceError(
                    f"podman system service did not answer GET /_ping on {self.url} within {_START_TIMEOUT:g} s",
                    log_tail=log_tail(self.log_path),
                )
            time.sleep(_POLL_INTERVAL)

    def _answers_ping(self, client: docker.DockerClient) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return bool(client.ping())
        except (docker.errors.DockerException, requests.RequestException):
            return False

    def _remove_containers(self) -> None:
        # Through the CLI rather than the API, so that it also works when the service is the thing that broke.
        result = self._run_podman("rm", "--all", "--force", "--time", "0", check=False)
        if result.returncode != 0:
            self._append_to_log(f"podman rm --all --force failed at stop: {result.stderr.strip()}\n")

    def _stop_service(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=_STOP_TIMEOUT)

    def _wait_for_helpers(self) -> None:
        """Wait (a deadline) until no process names the directory: conmon and ``podman container cleanup``,
        started for a container just removed, outlive the service and write into the directory as they end."""
        deadline = time.monotonic() + _STOP_TIMEOUT
        while processes_naming(self.directory) and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)

    def _unmount_leftovers(self) -> None:
        # Deepest first, and lazily: a mount that is still busy is detached now and freed when it is not.
        for mount_point in sorted(
            mount_points_under(self.directory), key=lambda p: len(p.parts), reverse=True
        ):
            subprocess.run(
                ["umount", "--lazy", str(mount_point)], capture_output=True, check=False, timeout=30
            )

    def _remove_directory(self) -> None:
        if self._directory is None:
            return
        shutil.rmtree(self._directory, ignore_errors=True)
        if self._directory.exists():
            raise PodmanServiceError(
                f"{self._directory} could not be removed", log_tail=log_tail(self.log_path)
            )

    def _append_to_log(self, text: str) -> None:
        with self.log_path.open("a") as log:
            log.write(text)
