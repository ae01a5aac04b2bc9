"""Worker providers: where workers run."""

from hodei.providers.docker import DockerProvider, DockerProviderConfig
from hodei.providers.process import ProcessProvider

__all__ = ["DockerProvider", "DockerProviderConfig", "ProcessProvider"]
