"""Worker providers: where workers run."""

from hodei.providers._docker import DockerProvider, DockerProviderConfig
from hodei.providers._process import ProcessProvider

__all__ = ["DockerProvider", "DockerProviderConfig", "ProcessProvider"]
