"""The private working directory of a throw-away service (PostgreSQL cluster, Podman service)."""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = ["private_directory"]


def private_directory(requested: Path | None, *, prefix: str, error: type[Exception]) -> Path:
    """``requested`` (created if missing; it must be empty), or a new temporary directory; mode 0700.

    Raises ``error`` for a requested directory that holds something already: a service never writes over
    somebody's files.
    """
    if requested is None:
        directory = Path(tempfile.mkdtemp(prefix=prefix))
    else:
        directory = requested
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise error(f"{directory} is not empty")
    directory.chmod(0o700)
    return directory
