"""JoinTokens: one join token per provisioned worker, for the provider to hand to the worker's agent.

``ProcessProvider(address, join_tokens=JoinTokens(authority))`` gives each agent process its token in its
environment (``HODEI_JOIN_TOKEN``); ``DockerProviderConfig(environment_for=JoinTokens(authority).environment)``
does the same for containers.
"""

from __future__ import annotations

from dataclasses import dataclass

from hodei.domain import DynamicWorkerConfig
from hodei.security._tokens import TokenAuthority

__all__ = ["JOIN_TOKEN_VARIABLE", "JoinTokens"]

JOIN_TOKEN_VARIABLE = "HODEI_JOIN_TOKEN"
"""The environment variable ``hodei agent`` reads its join token from."""


@dataclass(frozen=True, slots=True)
class JoinTokens:
    """Mints a single-use join token for a worker, valid ``ttl`` seconds (long enough for the worker to start
    and say hello). It binds the worker's pool (``bind_pool``) and labels (``bind_labels``), so that a worker
    cannot claim a pool or labels it was not provisioned with."""

    authority: TokenAuthority
    ttl: float = 600.0
    bind_pool: bool = True
    bind_labels: bool = True

    def __call__(self, worker_id: str, config: DynamicWorkerConfig) -> str:
        return self.authority.mint_join_token(
            worker_id,
            ttl=self.ttl,
            pool=config.pool if self.bind_pool else None,
            labels=dict(config.labels) if self.bind_labels else None,
        )

    def environment(self, worker_id: str, config: DynamicWorkerConfig) -> dict[str, str]:
        """``{"HODEI_JOIN_TOKEN": token}``: the shape of ``DockerProviderConfig.environment_for``."""
        return {JOIN_TOKEN_VARIABLE: self(worker_id, config)}

    def __repr__(self) -> str:
        return f"JoinTokens(ttl={self.ttl:g}, bind_pool={self.bind_pool}, bind_labels={self.bind_labels})"
