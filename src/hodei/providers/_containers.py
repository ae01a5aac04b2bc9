"""The container of a worker, in the engine's terms: the provider's settings (:class:`DockerProviderConfig`);
how a worker becomes a container; and how a container is read back as a worker (:func:`worker_of`).

The container is told who it is through its environment (``HODEI_WORKER_ID``, ``HODEI_SCHEDULER``, …, plus
whatever ``DockerProviderConfig.environment_for`` adds, such as a join token) and its labels through its
command (``--label k=v``, appended to the image's ``hodei agent`` entrypoint, so a value may hold commas). It
carries labels that mark it as hodei's (``hodei.worker=true``, ``hodei.worker.id``, ``hodei.pool``,
``hodei.owner``), so that ``DockerProvider.list_workers`` — and the reconciler after it — finds it again after
a restart of the control plane. CPU and memory limits come from the worker's
:class:`~hodei.domain.DynamicWorkerConfig`. Nothing here talks to an engine, and the ``docker`` SDK is not
imported: :mod:`hodei.providers._docker` makes the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hodei._ownership import OWNER_LABEL
from hodei._settings import check_settings
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerStatus, WorkerType

if TYPE_CHECKING:
    from docker.api.container import _RestartPolicy
    from docker.models.containers import Container

__all__ = [
    "LABEL_OWNER",
    "LABEL_POOL",
    "LABEL_WORKER",
    "LABEL_WORKER_ID",
    "MIB",
    "DockerProviderConfig",
    "command",
    "environment",
    "labels",
    "owned_filter",
    "restart_policy",
    "status_of",
    "worker_of",
]

LABEL_WORKER = "hodei.worker"
LABEL_WORKER_ID = "hodei.worker.id"
LABEL_POOL = "hodei.pool"
LABEL_OWNER = "hodei.owner"

MIB = 1024 * 1024

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
    ``owner`` marks the containers of this control plane (label ``hodei.owner``): ``DockerProvider.list_workers``
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


def labels(settings: DockerProviderConfig, worker_id: str, config: DynamicWorkerConfig) -> dict[str, str]:
    """The labels that mark the container as this owner's worker, found again after a restart."""
    return {
        LABEL_WORKER: "true",
        LABEL_WORKER_ID: worker_id,
        LABEL_POOL: config.pool,
        LABEL_OWNER: settings.owner,
    }


def owned_filter(settings: DockerProviderConfig) -> dict[str, str | list[str] | bool]:
    """The engine's filter for the containers of this owner's workers."""
    return {"label": [f"{LABEL_WORKER}=true", f"{LABEL_OWNER}={settings.owner}"]}


def environment(
    settings: DockerProviderConfig, worker_id: str, config: DynamicWorkerConfig
) -> dict[str, str]:
    """Who the agent in the container is and whom it dials, plus ``environment_for``'s additions."""
    variables = {
        **settings.environment,
        "HODEI_SCHEDULER": ",".join(settings.schedulers),
        "HODEI_WORKER_ID": worker_id,
        "HODEI_WORKER_TYPE": WorkerType.DOCKER.value,
        "HODEI_POOL": config.pool,
        "HODEI_CPU_CORES": str(config.cpu_cores),
        "HODEI_MEMORY_MB": str(config.memory_mb),
    }
    if settings.environment_for is not None:
        variables.update(settings.environment_for(worker_id, config))
    return variables


def command(config: DynamicWorkerConfig) -> list[str]:
    """The worker's labels as arguments of the image's ``hodei agent`` entrypoint (a value may hold commas)."""
    arguments: list[str] = []
    for key, value in sorted(config.labels.items()):
        arguments += ["--label", f"{key}={value}"]
    return arguments


def restart_policy(settings: DockerProviderConfig) -> _RestartPolicy | None:
    if settings.restart_policy == "on-failure":
        return {"Name": "on-failure", "MaximumRetryCount": settings.restart_max_retries}
    if settings.restart_policy == "always":
        return {"Name": "always"}
    return None


def status_of(container: Container) -> WorkerStatus:
    """What the container's state says about the worker's machine."""
    state = container.attrs.get("State") or {}
    name = state.get("Status", container.status) if isinstance(state, dict) else container.status
    if name == "exited":
        return WorkerStatus.TERMINATED if state.get("ExitCode", 1) == 0 else WorkerStatus.FAILED
    return _STATUS_BY_STATE.get(name, WorkerStatus.FAILED)


def worker_of(container: Container) -> DynamicWorker:
    """The worker a container of hodei's is, read back from its labels and limits."""
    found = container.labels
    host = container.attrs.get("HostConfig") or {}
    config = DynamicWorkerConfig(
        worker_type=WorkerType.DOCKER,
        cpu_cores=int(host.get("NanoCpus") or 0) // 1_000_000_000,
        memory_mb=int(host.get("Memory") or 0) // MIB,
        pool=found.get(LABEL_POOL, "default"),
        image=(container.attrs.get("Config") or {}).get("Image"),
        labels={OWNER_LABEL: found[LABEL_OWNER]} if found.get(LABEL_OWNER) else {},
    )
    return DynamicWorker(found[LABEL_WORKER_ID], WorkerType.DOCKER, config, status_of(container))
