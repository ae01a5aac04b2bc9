"""The garbage collector's settings for a process that holds many long-lived objects (the scheduler's registry,
the bench's thousands of agents in one swarm).

The default gen-0 threshold (700) makes the collector walk those objects over and over under load. Freeze what
start-up made, and collect young objects less often.
"""

from __future__ import annotations

import gc

__all__ = ["tune_for_long_lived_objects"]


def tune_for_long_lived_objects() -> None:
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
