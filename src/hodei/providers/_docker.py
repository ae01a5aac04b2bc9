"""DockerProvider: each worker is a container running ``hodei agent``, on any engine with the Docker API.

The container is told who it is through its environment (``HODEI_WORKER_ID``, ``HODEI_SCHEDULER``, …, plus
whatever ``DockerProviderConfig.environment_for`` adds, such as a join token) and its labels through its
command (``--label k=v``, appended to the image's ``hodei agent`` entrypoint, so a value may hold commas). It
carries labels that mark it as hodei's (``hodei.worker=true``, ``hodei.worker.id``, ``hodei.pool``,
``hodei.owner``), so that :meth:`DockerProvider.list_workers` — and the reconciler after it — finds it again
after a restart of the control plane. CPU and memory limits come from the worker's
:class:`~hodei.domain.DynamicWorkerConfig`.

The ``docker`` SDK is synchronous; its calls run on a thread pool of the provider's own, so that provisioning
20 containers at once does not queue behind the event loop's default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from hodei._ownership import OWNER_LABEL, owned
from hodei._settings import check_settings
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerStatus, WorkerType
from hodei.errors import ProviderError

if TYPE_CHECKING:
    from docker.api.container import _RestartPolicy

__all__ = [
    "LABEL_OWNER",
    "LABEL_POOL",
    "LABEL_WORKER",
    "LABEL_WORKER_ID",
    "DockerProvider",
    "DockerProviderConfig",
]

LABEL_WORKER = "hodei.worker"
LABEL_WORKER_ID = "hodei.worker.id"
LABEL_POOL = "hodei.pool"
LABEL_OWNER = "hodei.owner"

_MIB = 1024 * 1024
_T = TypeVar("_T")

RESTART_POLICIES = ("no", "on-failure", "always")

# What the container's state says about the worker's machine (not about its registration).
_STATUS_BY_STATE = {
    "created": WorkerStatus.PROVISIONING,
    "restarting": WorkerStatus.PROVISIONING,
    "running": WorkerStatus.AVAILABLE,
    "paused": WorkerStatus.AVAILABLE,
    "removing": WorkerStatus.TERMINATED,
    "dead": WorkerStatus.FAILED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DockerProviderConfig:
    """Where and how worker containers run.

    ``schedulers``: the addresses the agents dial. ``base_url``: the engine (``unix:///run/podman/podman.sock``;
    None reads ``DOCKER_HOST`` as the docker CLI does). ``image``: the worker image, unless a worker's config
    names its own. ``network_mode``: ``host`` lets agents reach a scheduler on the host's loopback.
    ``owner`` marks the containers of this control plane (label ``hodei.owner``): :meth:`DockerProvider.list_workers`
    lists only those. ``environment`` is given to every container; ``environment_for(worker_id, config)`` adds
    a worker's own variables (its credentials). ``mounts``: host files for every container, as
    ``HOST_PATH:CONTAINER_PATH[:ro|rw]`` (the CA and client certificate of a TLS scheduler, for instance;
    the image runs as uid 65532, which must be able to read them). ``stop_grace``: seconds between SIGTERM
    and SIGKILL.
    """

    schedulers: tuple[str, ...]
    image: str
    base_url: str | None = None
    network_mode: str = "host"
    restart_policy: str = "on-failure"
    restart_max_retries: int = 3
    owner: str = "hodei"
    name_prefix: str = "hodei-"
    environment: Mapping[str, str] = field(default_factory=dict)
    environment_for: Callable[[str, DynamicWorkerConfig], Mapping[str, str]] | None = None
    mounts: tuple[str, ...] = ()
    stop_grace: float = 10.0
    api_timeout: float = 60.0
    api_threads: int = 16

    def __post_init__(self) -> None:
        check_settings(
            self,
            {
                "schedulers": ("at least one address", bool(self.schedulers)),
                "image": ("not empty", bool(self.image)),
                "restart_policy": (
                    f"one of {', '.join(RESTART_POLICIES)}",
                    self.restart_policy in RESTART_POLICIES,
                ),
                "restart_max_retries": (">= 0", self.restart_max_retries >= 0),
                "stop_grace": (">= 0", self.stop_grace >= 0),
                "api_timeout": ("> 0", self.api_timeout > 0),
                "api_threads": (">= 1", self.api_threads >= 1),
                "mounts": (
                    "HOST_PATH:CONTAINER_PATH[:ro|rw], absolute paths",
                    all(map(_valid_mount, self.mounts)),
                ),
            },
        )


def _valid_mount(mount: str) -> bool:
    parts = mount.split(":")
    return (
        len(parts) in (2, 3)
        and all(part.startswith("/") for part in parts[:2])
        and (len(parts) == 2 or parts[2] in ("ro", "rw"))
    )


def _status_of(container: Container) -> WorkerStatus:
    state = container.attrs.get("State") or {}
    name = state.get("Status", container.status) if isinstance(state, dict) else container.status
    if name == "exited":
        return WorkerStatus.TERMINATED if state.get("ExitCode", 1) == 0 else WorkerStatus.FAILED
    return _STATUS_BY_STATE.get(name, WorkerStatus.FAILED)


class DockerProvider:
    """``DockerProvider(DockerProviderConfig(schedulers=("127.0.0.1:50051",), image="hodei-agent:1"))``.

    Raises :class:`~hodei.errors.ProviderError` for every engine failure, with a hint; a failed provision
    leaves no container behind.
    """

    worker_type = WorkerType.DOCKER

    def __init__(self, config: DockerProviderConfig, *, client: docker.DockerClient | None = None) -> None:
        self.config = config
        self.owner = config.owner
        self._executor = ThreadPoolExecutor(config.api_threads, thread_name_prefix="hodei-docker")
        self._client = client
        self._closed = False
        self._capacity: tuple[int, int] | None = None
        self._capacity_lock = threading.Lock()

    # -- the engine ---------------------------------------------------------------------------------------

    @property
    def engine(self) -> str:
        return self.config.base_url or "the engine of DOCKER_HOST"

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            options: dict[str, Any] = {
                "timeout": round(self.config.api_timeout),
                "max_pool_size": self.config.api_threads,
            }
            if self.config.base_url is None:
                self._client = docker.from_env(**options)
            else:
                self._client = docker.DockerClient(base_url=self.config.base_url, **options)
        return self._client

    async def _call(self, worker_id: str | None, what: str, work: Callable[[], _T]) -> _T:
        """Run ``work`` (SDK calls) on the provider's threads; engine failures become ProviderErrors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, work)
        except ProviderError:
            raise
        except docker.errors.ImageNotFound as error:
            raise ProviderError(
                f"{what}: {error.explanation or error}",
                worker_id=worker_id,
                hint="build or load the worker image on the engine first (see deploy/docker/README.md)",
            ) from error
        except docker.errors.APIError as error:
            raise self._api_error(worker_id, what, error) from error
        except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
            raise ProviderError(
                f"{what}: cannot reach {self.engine}: {error}",
                worker_id=worker_id,
                hint="start the engine (podman system service, or dockerd) or fix the provider's base_url",
            ) from error

    def _api_error(self, worker_id: str | None, what: str, error: docker.errors.APIError) -> ProviderError:
        explanation = str(error.explanation or error)
        if error.status_code == 409 or "already in use" in explanation:
            return ProviderError(
                f"{what}: a container named {self._name(worker_id or '')!r} exists already",
                worker_id=worker_id,
                hint="destroy the old worker or choose another worker id",
            )
        if any(word in explanation.lower() for word in ("memory", "cpu", "cgroup", "no space", "resources")):
            return ProviderError(
                f"{what}: the engine is out of resources: {explanation}",
                worker_id=worker_id,
                hint="lower the worker's cpu_cores or memory_mb, or free capacity on the engine",
            )
        return ProviderError(
            f"{what}: the engine refused ({error.status_code}): {explanation}",
            worker_id=worker_id,
            hint=f"see the engine's log at {self.engine}",
        )

    # -- one container -----------------------------------------------------------------------------------

    def _name(self, worker_id: str) -> str:
        return f"{self.config.name_prefix}{worker_id}"

    def _labels(self, worker_id: str, config: DynamicWorkerConfig) -> dict[str, str]:
        return {
            LABEL_WORKER: "true",
            LABEL_WORKER_ID: worker_id,
            LABEL_POOL: config.pool,
            LABEL_OWNER: self.config.owner,
        }

    def _environment(self, worker_id: str, config: DynamicWorkerConfig) -> dict[str, str]:
        environment = {
            **self.config.environment,
            "HODEI_SCHEDULER": ",".join(self.config.schedulers),
            "HODEI_WORKER_ID": worker_id,
            "HODEI_WORKER_TYPE": WorkerType.DOCKER.value,
            "HODEI_POOL": config.pool,
            "HODEI_CPU_CORES": str(config.cpu_cores),
            "HODEI_MEMORY_MB": str(config.memory_mb),
        }
        if self.config.environment_for is not None:
            environment.update(self.config.environment_for(worker_id, config))
        return environment

    @staticmethod
    def _command(config: DynamicWorkerConfig) -> list[str]:
        command: list[str] = []
        for key, value in sorted(config.labels.items()):
            command += ["--label", f"{key}={value}"]
        return command

    def _engine_capacity(self) -> tuple[int, int]:
        """The engine's CPUs and memory in bytes (0: not reported), asked once: a machine does not grow. (The
        lock: 20 provisions at once ask once, not 20 times.)"""
        with self._capacity_lock:
            if self._capacity is None:
                info = self._docker().info()
                self._capacity = int(info.get("NCPU") or 0), int(info.get("MemTotal") or 0)
            return self._capacity

    def _check_capacity(self, worker_id: str, config: DynamicWorkerConfig) -> None:
        cpus, memory = self._engine_capacity()
        if cpus and config.cpu_cores > cpus:
            raise ProviderError(
                f"worker {worker_id!r} asks for {config.cpu_cores} CPU cores; the engine has {cpus}",
                worker_id=worker_id,
                hint="lower cpu_cores, or provision on a larger engine",
            )
        if memory and config.memory_mb * _MIB > memory:
            raise ProviderError(
                f"worker {worker_id!r} asks for {config.memory_mb} MB of memory; the engine has "
                f"{memory // _MIB} MB",
                worker_id=worker_id,
                hint="lower memory_mb, or provision on a larger engine",
            )

    def _create_and_start(self, worker_id: str, config: DynamicWorkerConfig) -> None:
        self._check_capacity(worker_id, config)
        restart: _RestartPolicy | None = None
        if self.config.restart_policy == "on-failure":
            restart = {"Name": "on-failure", "MaximumRetryCount": self.config.restart_max_retries}
        elif self.config.restart_policy == "always":
            restart = {"Name": "always"}
        container = self._docker().containers.create(
            config.image or self.config.image,
            self._command(config),
            name=self._name(worker_id),
            labels=self._labels(worker_id, config),
            environment=self._environment(worker_id, config),
            network_mode=self.config.network_mode,
            nano_cpus=config.cpu_cores * 1_000_000_000,
            mem_limit=config.memory_mb * _MIB,
            restart_policy=restart,
            stop_signal="SIGTERM",
            volumes=list(self.config.mounts),
        )
        try:
            container.start()
        except BaseException:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                container.remove(force=True)
            raise

    async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
        """Create and start the worker's container; nothing is left behind when this fails or is cancelled."""
        config = owned(config, self.config.owner)  # the agent registers with its owner's label
        work = functools.partial(self._create_and_start, worker_id, config)
        task = asyncio.ensure_future(self._call(worker_id, f"could not provision worker {worker_id!r}", work))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # The engine may still be creating the container: let it finish, then take the container away.
            await asyncio.shield(self._undo(task, worker_id))
            raise
        return DynamicWorker(worker_id, WorkerType.DOCKER, config, WorkerStatus.PROVISIONING)

    async def _undo(self, creation: asyncio.Future[None], worker_id: str) -> None:
        with contextlib.suppress(ProviderError):
            await creation
        await self.destroy(worker_id)

    def _find(self, worker_id: str) -> Container | None:
        try:
            return self._docker().containers.get(self._name(worker_id))
        except docker.errors.NotFound:
            return None

    async def container(self, worker_id: str) -> Container | None:
        """The worker's container as the engine describes it (``.attrs`` is ``docker inspect``), or None."""
        return await self._call(
            worker_id, f"could not inspect worker {worker_id!r}", lambda: self._find(worker_id)
        )

    async def status(self, worker_id: str) -> WorkerStatus | None:
        container = await self.container(worker_id)
        return None if container is None else _status_of(container)

    def _stop(self, worker_id: str, grace: float) -> Container | None:
        """Stop the worker's container if it runs; the container (None: there is none)."""
        container = self._find(worker_id)
        if container is not None and container.status in ("running", "restarting", "paused"):
            container.stop(timeout=max(0, round(grace)))
        return container

    async def stop(self, worker_id: str, *, grace: float = 10.0) -> None:
        """SIGTERM (the agent drains and unregisters), then SIGKILL after ``grace`` seconds."""
        await self._call(
            worker_id, f"could not stop worker {worker_id!r}", lambda: self._stop(worker_id, grace)
        )

    @staticmethod
    def _remove(container: Container) -> None:
        with contextlib.suppress(docker.errors.NotFound):  # removed meanwhile: gone is gone
            container.remove(force=True)

    async def destroy(self, worker_id: str) -> None:
        """Stop the container (``stop_grace``) and remove it. An unknown worker is not an error."""
        stopped = await self._call(
            worker_id,
            f"could not stop worker {worker_id!r}",
            lambda: self._stop(worker_id, self.config.stop_grace),
        )
        if stopped is not None:
            await self._call(
                worker_id, f"could not remove worker {worker_id!r}", lambda: self._remove(stopped)
            )

    def _owned(self) -> list[Container]:
        filters: dict[str, str | list[str] | bool] = {
            "label": [f"{LABEL_WORKER}=true", f"{LABEL_OWNER}={self.config.owner}"]
        }
        return list(self._docker().containers.list(all=True, filters=filters, ignore_removed=True))

    async def list_workers(self) -> list[DynamicWorker]:
        """Every container of this owner that carries hodei's labels, whatever its state."""
        containers = await self._call(None, "could not list worker containers", self._owned)
        return [self._worker_of(c) for c in containers if c.labels.get(LABEL_WORKER_ID)]

    @staticmethod
    def _worker_of(container: Container) -> DynamicWorker:
        labels = container.labels
        host = container.attrs.get("HostConfig") or {}
        config = DynamicWorkerConfig(
            worker_type=WorkerType.DOCKER,
            cpu_cores=int(host.get("NanoCpus") or 0) // 1_000_000_000,
            memory_mb=int(host.get("Memory") or 0) // _MIB,
            pool=labels.get(LABEL_POOL, "default"),
            image=(container.attrs.get("Config") or {}).get("Image"),
            labels={OWNER_LABEL: labels[LABEL_OWNER]} if labels.get(LABEL_OWNER) else {},
        )
        return DynamicWorker(labels[LABEL_WORKER_ID], WorkerType.DOCKER, config, _status_of(container))

    async def aclose(self) -> None:
        """Release the engine connection and the threads. The containers stay (the reconciler's business)."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            self._client.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
