"""Registry stores: where the scheduler keeps its records."""

from hodei.stores._memory import MemoryRegistryStore

__all__ = ["MemoryRegistryStore"]
