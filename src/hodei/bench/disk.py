"""How many durable writes a second the disk under a directory takes: what bounds one-at-a-time commits."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

__all__ = ["fsync_rate"]


def fsync_rate(directory: Path, *, seconds: float = 1.0, block: int = 4096) -> float:
    """Append ``block`` bytes and ``fsync`` the file, as often as possible for ``seconds``: writes per second.

    SQLite in WAL mode with ``synchronous=FULL`` does one such append-and-sync per commit, so a scheduler
    answering one registration at a time can go no faster than this."""
    data = os.urandom(block)
    descriptor, name = tempfile.mkstemp(prefix="hodei-fsync-", dir=directory)
    try:
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while (now := time.perf_counter()) < deadline or count == 0:
            os.write(descriptor, data)
            os.fsync(descriptor)
            count += 1
        return count / (now - started)
    finally:
        os.close(descriptor)
        Path(name).unlink()
