"""Registry stores: where the scheduler keeps its records."""

from hodei.stores.memory import MemoryRegistryStore

__all__ = ["MemoryRegistryStore"]
