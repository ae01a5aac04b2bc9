"""Worker providers: where workers run.

:class:`ProcessProvider` runs each worker as a local process; :class:`DockerProvider` as a container on an engine
with the Docker API, set up by :class:`DockerProviderConfig`. ``DockerProvider`` is imported when first asked for,
so that ``import hodei.providers`` does not import the docker SDK.
"""

from typing import TYPE_CHECKING, Any

from hodei.providers._containers import DockerProviderConfig
from hodei.providers._process import ProcessProvider

if TYPE_CHECKING:
    from hodei.providers._docker import DockerProvider

__all__ = ["DockerProvider", "DockerProviderConfig", "ProcessProvider"]


def __getattr__(name: str) -> Any:
    """``DockerProvider``, imported on first use (it needs the docker SDK)."""
    if name == "DockerProvider":
        from hodei.providers._docker import DockerProvider

        return DockerProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
