"""Which control plane a worker belongs to: the reserved label ``hodei.owner``.

A provider marks what it provisions with its owner id (a container's labels, an agent's ``--label``, a mock
worker's config), so the worker registers with it; :class:`~hodei.management.WorkerManagementService` sets it on
every worker it provisions. The reconciler acts only on workers and machines that carry its control plane's
owner id: never on a hand-started agent, a static worker, or another control plane's workers.
"""

from __future__ import annotations

from dataclasses import replace

from hodei.domain import DynamicWorkerConfig

__all__ = ["DEFAULT_OWNER", "OWNER_LABEL", "owned", "owner_of"]

OWNER_LABEL = "hodei.owner"
"""The reserved label that names the control plane a worker was provisioned by."""

DEFAULT_OWNER = "hodei"
"""The owner id of a provider that is given none. Control planes that share a scheduler need distinct ones."""


def owned(config: DynamicWorkerConfig, owner: str) -> DynamicWorkerConfig:
    """``config`` with its owner label set to ``owner`` (whatever it said before: the label is reserved)."""
    if config.labels.get(OWNER_LABEL) == owner:
        return config
    return replace(config, labels={**config.labels, OWNER_LABEL: owner})


def owner_of(provider: object) -> str:
    """The owner id of ``provider`` (its ``owner`` attribute), or :data:`DEFAULT_OWNER` when it has none."""
    owner = getattr(provider, "owner", None)
    return owner if isinstance(owner, str) and owner else DEFAULT_OWNER
