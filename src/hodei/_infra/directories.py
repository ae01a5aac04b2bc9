"""What the throw-away services of hodei.testing (PostgreSQL cluster, Podman service) share: a private working
directory, the tail of a log for an error message, a free loopback port, and whether we run as root."""

from __future__ import annotations

import os
import random
import socket
import tempfile
from pathlib import Path

__all__ = ["free_loopback_port", "log_tail", "private_directory", "running_as_root"]


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


def running_as_root() -> bool:
    return os.geteuid() == 0


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of the log at ``path`` ("" when it cannot be read), for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # ports below are the well-known services' and the registered ones most used


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range when there is room.

    A port the kernel hands out itself (``bind(0)``) is one it hands out again: as the local end of an outgoing
    connection, or to the next ``bind(0)``. A server killed and started again on its port — the restart the
    tests and the fleet benchmark make while thousands of agents reconnect — would then find it taken.
    """
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(100 if low - _LOWEST >= 1_000 else 0):
        port = random.randrange(_LOWEST, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
