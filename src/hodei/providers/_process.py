"""ProcessProvider: each worker is a local ``hodei agent`` child process.

Each agent is told the control plane's pid (``--parent-pid``) and shuts itself down (drain, unregister, exit)
when that process is gone, even after a SIGKILL; :meth:`ProcessProvider.aclose` stops every child it started.
So no agent outlives the control plane.

Against a scheduler with auth on, ``join_tokens`` (:class:`hodei.security.JoinTokens`) gives each agent a join
token of its own, in its environment (``HODEI_JOIN_TOKEN``) rather than on its command line, which any user of
the machine can read; ``tls`` is passed as the files' paths (``--tls-ca``, ``--tls-cert``, ``--tls-key``).

An agent does not inherit the control plane's environment (its database password, its cloud keys): it gets
only :data:`PASSED_ENVIRONMENT` (and the ``LC_*`` locale variables), the variables ``pass_environment``
names, the values of ``environment``, and its own ``HODEI_JOIN_TOKEN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from hodei._environment import passed_environment
from hodei._ownership import DEFAULT_OWNER, owned
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerStatus, WorkerType
from hodei.errors import ProviderError
from hodei.security._provisioning import JOIN_TOKEN_VARIABLE
from hodei.security._tls import ClientTlsConfig

__all__ = ["PASSED_ENVIRONMENT", "ProcessProvider"]

PASSED_ENVIRONMENT = ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONHOME")
"""The control plane's variables every agent gets (when set), with the ``LC_*`` ones: what a process needs to
run ``python -m hodei`` as the control plane does, and nothing secret."""


@dataclass
class _Child:
    worker: DynamicWorker
    process: asyncio.subprocess.Process
    log_path: Path


class ProcessProvider:
    """``ProcessProvider("127.0.0.1:50051")`` starts ``python -m hodei agent`` per worker.

    Each agent's output goes to ``<log_dir>/<worker_id>.log``. ``stop`` sends SIGTERM (the agent drains and
    unregisters) and SIGKILL after ``grace``.

    ``pass_environment`` names more variables of the control plane's environment to pass on (when set);
    ``environment`` gives variables of the agents' own (they win over passed ones, and the join token over
    both). ``owner`` is written on each agent's labels (``hodei.owner``), so that its registration says whose
    it is.
    """

    def __init__(
        self,
        schedulers: str | Sequence[str],
        *,
        python: str = sys.executable,
        log_dir: str | Path | None = None,
        stop_grace: float = 10.0,
        join_tokens: Callable[[str, DynamicWorkerConfig], str] | None = None,
        tls: ClientTlsConfig | None = None,
        pass_environment: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
        owner: str = DEFAULT_OWNER,
    ) -> None:
        if isinstance(pass_environment, str):
            raise TypeError("pass_environment is a sequence of variable names, not one string")
        self.schedulers = (schedulers,) if isinstance(schedulers, str) else tuple(schedulers)
        self._python = python
        self._log_dir = (
            Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="hodei-agents-"))
        )
        self.stop_grace = stop_grace
        self._join_tokens = join_tokens
        self._tls = tls
        self.pass_environment = tuple(pass_environment)
        self.environment = dict(environment or {})
        self.owner = owner
        self._children: dict[str, _Child] = {}

    worker_type = WorkerType.PROCESS

    def _command(self, worker_id: str, config: DynamicWorkerConfig) -> list[str]:
        command = [
            self._python,
            "-m",
            "hodei",
            "agent",
            "--scheduler",
            ",".join(self.schedulers),
            "--worker-id",
            worker_id,
            "--worker-type",
            WorkerType.PROCESS.value,
            "--cpu-cores",
            str(config.cpu_cores),
            "--memory-mb",
            str(config.memory_mb),
            "--pool",
            config.pool,
            "--parent-pid",
            str(os.getpid()),
        ]
        for key, value in config.labels.items():
            command += ["--label", f"{key}={value}"]
        tls = self._tls
        if tls is not None:
            for option, path in (
                ("--tls-ca", tls.ca_file),
                ("--tls-cert", tls.cert_file),
                ("--tls-key", tls.key_file),
            ):
                if path is not None:
                    command += [option, str(path.absolute())]
        return command

    def _environment(self, worker_id: str, config: DynamicWorkerConfig) -> dict[str, str]:
        # An allow-list, never the control plane's whole environment: its secrets are not the agent's. The
        # agent is told everything on its command line; HODEI_* settings of the control plane's own environment
        # (HODEI_LABELS, say) are not its. Its join token alone comes in its environment.
        environment = passed_environment({*PASSED_ENVIRONMENT, *self.pass_environment})
        environment.update(self.environment)
        if self._join_tokens is not None:
            environment[JOIN_TOKEN_VARIABLE] = self._join_tokens(worker_id, config)
        return environment

    async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
        if worker_id in self._children:
            raise ProviderError(
                f"worker {worker_id!r} already runs here",
                worker_id=worker_id,
                hint="choose another worker id",
            )
        config = owned(config, self.owner)  # before the join token is minted: it binds the labels
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{worker_id}.log"
        try:
            with log_path.open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *self._command(worker_id, config),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    env=self._environment(worker_id, config),
                )
        except OSError as error:
            raise ProviderError(
                f"could not start the agent of {worker_id!r}: {error}",
                worker_id=worker_id,
                hint=f"check that {self._python} can run `-m hodei`",
            ) from error
        worker = DynamicWorker(
            worker_id,
            WorkerType.PROCESS,
            replace(config, worker_type=WorkerType.PROCESS),
            WorkerStatus.PROVISIONING,
        )
        self._children[worker_id] = _Child(worker, process, log_path)
        return worker

    def pid(self, worker_id: str) -> int | None:
        child = self._children.get(worker_id)
        return None if child is None else child.process.pid

    def log_path(self, worker_id: str) -> Path | None:
        child = self._children.get(worker_id)
        return None if child is None else child.log_path

    async def status(self, worker_id: str) -> WorkerStatus | None:
        child = self._children.get(worker_id)
        if child is None:
            return None
        code = child.process.returncode
        if code is None:
            return WorkerStatus.AVAILABLE
        return WorkerStatus.TERMINATED if code == 0 else WorkerStatus.FAILED

    async def stop(self, worker_id: str, *, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if the agent has not exited after ``grace`` seconds."""
        child = self._children.get(worker_id)
        if child is None or child.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()

    async def destroy(self, worker_id: str) -> None:
        """Stop the worker (if it runs) and forget it. Unknown workers are not an error."""
        if worker_id not in self._children:
            return
        await self.stop(worker_id, grace=self.stop_grace)
        del self._children[worker_id]

    async def list_workers(self) -> list[DynamicWorker]:
        return [c.worker for c in self._children.values() if c.process.returncode is None]

    async def aclose(self) -> None:
        """Stop every child this provider started. Idempotent."""
        await asyncio.gather(*(self.destroy(worker_id) for worker_id in list(self._children)))

    async def __aenter__(self) -> ProcessProvider:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
