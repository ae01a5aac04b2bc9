"""What a child process of hodei may see of hodei's own environment: an allow-list, never the whole of it (the
control plane's database password, an agent's join token)."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

__all__ = ["passed_environment", "state_directory"]


def passed_environment(names: Collection[str]) -> dict[str, str]:
    """The variables of this process named in ``names`` (when set), with the ``LC_*`` locale ones."""
    return {k: v for k, v in os.environ.items() if k in names or k.startswith("LC_")}


def state_directory() -> Path:
    """hodei's state directory: ``$XDG_STATE_HOME/hodei`` (``~/.local/state/hodei``), absolute."""
    return (Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "hodei").absolute()
