"""Worker providers: where workers run.

:class:`ProcessProvider` runs each worker as a local process; :class:`DockerProvider` as a container on an engine
with the Docker API, set up by :class:`DockerProviderConfig`. ``DockerProvider`` is imported when first asked for,
so that ``import hodei.providers`` does not import the docker SDK.
"""

from typing import TYPE_CHECKING

from hodei._lazy import lazy_names
from hodei.providers._containers import DockerProviderConfig
from hodei.providers._process import ProcessProvider

if TYPE_CHECKING:
    from hodei.providers._docker import DockerProvider

__all__ = ["DockerProvider", "DockerProviderConfig", "ProcessProvider"]


__getattr__ = lazy_names(__name__, {"DockerProvider": "hodei.providers._docker"})
