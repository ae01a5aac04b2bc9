"""AgentConfig: who the agent says it is, where the schedulers are, and how it reconnects."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from hodei._environment import state_directory
from hodei._settings import check_settings
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerType
from hodei.security._tls import ClientTlsConfig

__all__ = ["AgentConfig", "default_work_dir"]


def _memory_mb() -> int:
    return int(psutil.virtual_memory().total // (1024 * 1024))


def default_work_dir() -> Path:
    """Where jobs run unless told: ``$XDG_STATE_HOME/hodei/work`` (``~/.local/state/hodei/work``) — or, for a
    user who cannot make it there (an agent in a container runs as a user with no home), a directory of its
    own under the system's temporary directory."""
    wanted = state_directory() / "work"
    existing = next((p for p in (wanted, *wanted.parents) if p.exists()), Path("/"))
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return wanted
    return Path(tempfile.gettempdir()) / f"hodei-{os.getuid()}" / "work"


def _hostname() -> str:
    # A hostname the registry accepts (letters, digits, '.', '_', '-').
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()).strip("._-")
    return name[:253]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """``schedulers`` are tried in turn: a scheduler that cannot be reached sends the agent to the next.

    After a broken stream the agent waits a random delay in ``[0, min(reconnect_max, reconnect_base * 2**n))``
    before its n-th attempt (full jitter): a thousand agents that lost the same scheduler do not all come back
    in the same millisecond, not even the first time. While it cannot connect, it says why (and what to check)
    at its first failure, then quietly retries: at most one warning per ``failure_log_interval`` seconds.

    A scheduler that refuses a hello because it is working on too many (``RESOURCE_EXHAUSTED`` with a
    ``google.rpc.RetryInfo`` delay) is not a failure: the agent comes back after the advised delay, stretched by
    a random share of up to ``advised_jitter``, and its backoff does not grow. A hello is given
    ``accept_timeout`` seconds (dialing included) to be accepted by the scheduler, and ``hello_timeout`` from
    then to be acknowledged: a hello queued at a busy scheduler is not abandoned for a new connection.

    ``token`` is what the agent presents first to a scheduler with auth on: a join token (single-use; the
    scheduler answers with the worker's own credential, which the agent keeps for reconnecting and
    unregistering) or a worker credential. It is a secret: never shown by ``repr``. ``tls`` makes the agent
    speak TLS to the schedulers (their CA, and a client certificate for mutual TLS).

    Each job the scheduler assigns runs in a directory of its own under ``work_dir/<worker id>`` (made when it
    starts, removed when it ends). A drain (or a shutdown) waits for the running job ``drain_timeout`` seconds
    unless the scheduler's drain names a deadline, then cancels it; a job cancelled or past its timeout gets
    SIGTERM, then SIGKILL after ``job_kill_grace`` seconds.
    """

    schedulers: tuple[str, ...]
    worker_id: str
    worker_type: WorkerType = WorkerType.PROCESS
    cpu_cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_mb: int = field(default_factory=_memory_mb)
    labels: Mapping[str, str] = field(default_factory=dict)
    pool: str = "default"
    hostname: str = field(default_factory=_hostname)
    reconnect_base: float = 0.2
    reconnect_max: float = 10.0
    hello_timeout: float = 10.0
    accept_timeout: float = 30.0
    advised_jitter: float = 0.2
    farewell_timeout: float = 5.0
    parent_pid: int | None = None  # shut down when this process is gone (the control plane that started us)
    parent_check_interval: float = 0.5
    # While it cannot connect, the agent says why once at once, then at most once per this many seconds.
    failure_log_interval: float = 30.0
    token: str | None = field(default=None, repr=False)
    tls: ClientTlsConfig | None = None
    work_dir: Path = field(default_factory=default_work_dir)
    drain_timeout: float = 60.0
    job_kill_grace: float = 5.0

    def __post_init__(self) -> None:
        check_settings(
            self,
            {
                "schedulers": ("at least one address", bool(self.schedulers)),
                "reconnect_base": ("> 0", self.reconnect_base > 0),
                "reconnect_max": (">= reconnect_base", self.reconnect_max >= self.reconnect_base),
                "hello_timeout": ("> 0", self.hello_timeout > 0),
                "accept_timeout": ("> 0", self.accept_timeout > 0),
                "advised_jitter": (">= 0", self.advised_jitter >= 0),
                "drain_timeout": (">= 0", self.drain_timeout >= 0),
                "job_kill_grace": ("> 0", self.job_kill_grace > 0),
            },
        )

    def worker(self, incarnation: int) -> DynamicWorker:
        config = DynamicWorkerConfig(
            worker_type=self.worker_type,
            cpu_cores=self.cpu_cores,
            memory_mb=self.memory_mb,
            labels=self.labels,
            pool=self.pool,
        )
        return DynamicWorker(
            self.worker_id, self.worker_type, config, incarnation=incarnation, hostname=self.hostname
        )

    def reconnect_delay(self, failures: int, random_fraction: float) -> float:
        """The wait before reconnection attempt ``failures`` (0 for the first), full jitter."""
        ceiling = min(self.reconnect_max, self.reconnect_base * 2.0**failures)
        return float(ceiling * random_fraction)

    def advised_delay(self, retry_after: float, random_fraction: float) -> float:
        """The wait the scheduler advised (``retry_after``), stretched by up to ``advised_jitter`` of itself."""
        return retry_after * (1.0 + self.advised_jitter * random_fraction)
