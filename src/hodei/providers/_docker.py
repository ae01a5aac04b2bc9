"""DockerProvider: each worker is a container running ``hodei agent``, on any engine with the Docker API.

This module makes the engine's calls; what a worker's container is (its name, labels, environment, limits) is
:mod:`hodei.providers._containers`. The ``docker`` SDK is synchronous; its calls run on a thread pool of the
provider's own, so that provisioning 20 containers at once does not queue behind the event loop's default
executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from hodei._ownership import owned
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerStatus, WorkerType
from hodei.errors import ProviderError
from hodei.providers._containers import (
    LABEL_WORKER_ID,
    MIB,
    DockerProviderConfig,
    command,
    environment,
    labels,
    owned_filter,
    restart_policy,
    status_of,
    worker_of,
)

__all__ = ["DockerProvider"]

_T = TypeVar("_T")


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
        if memory and config.memory_mb * MIB > memory:
            raise ProviderError(
                f"worker {worker_id!r} asks for {config.memory_mb} MB of memory; the engine has "
                f"{memory // MIB} MB",
                worker_id=worker_id,
                hint="lower memory_mb, or provision on a larger engine",
            )

    def _create_and_start(self, worker_id: str, config: DynamicWorkerConfig) -> None:
        self._check_capacity(worker_id, config)
        container = self._docker().containers.create(
            config.image or self.config.image,
            command(config),
            name=self._name(worker_id),
            labels=labels(self.config, worker_id, config),
            environment=environment(self.config, worker_id, config),
            network_mode=self.config.network_mode,
            nano_cpus=config.cpu_cores * 1_000_000_000,
            mem_limit=config.memory_mb * MIB,
            restart_policy=restart_policy(self.config),
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
        return None if container is None else status_of(container)

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
        filters = owned_filter(self.config)
        return list(self._docker().containers.list(all=True, filters=filters, ignore_removed=True))

    async def list_workers(self) -> list[DynamicWorker]:
        """Every container of this owner that carries hodei's labels, whatever its state."""
        containers = await self._call(None, "could not list worker containers", self._owned)
        return [worker_of(c) for c in containers if c.labels.get(LABEL_WORKER_ID)]

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
