"""What a stopped service can leave behind in its directory, as /proc tells it: processes whose command line
names the directory (conmon, ``podman container cleanup``), and mounts at or below it (overlay layers, a
container's root). :class:`~hodei._infra.podman.PodmanService` waits for the first and undoes the second
before it removes its directory; the tests check that neither is left."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["mount_points_under", "processes_naming"]

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def processes_naming(directory: Path) -> list[int]:
    """The processes (but this one) whose command line holds ``directory``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes()
        except OSError:  # it ended while we looked
            continue
        if os.fsencode(directory) in command_line:
            found.append(int(entry.name))
    return found


def mount_points_under(directory: Path) -> list[Path]:
    """The mount points at or below ``directory``, from /proc/self/mountinfo."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        # The mount point is the fifth field, with space, tab, newline and backslash escaped in octal.
        mount_point = Path(_OCTAL_ESCAPE.sub(lambda match: chr(int(match[1], 8)), fields[4]))
        if mount_point == directory or directory in mount_point.parents:
            found.append(mount_point)
    return found
