"""Registry stores: where the scheduler keeps its records.

:class:`MemoryRegistryStore` (one process), :class:`SqliteRegistryStore` (one scheduler, durable) and
:class:`PostgresRegistryStore` (replicas sharing one database, with :class:`PostgresLeadership` and
:class:`PostgresEventRelay`). The PostgreSQL ones are imported when first asked for, so that ``import
hodei.stores`` does not import the asyncpg driver. A store may also offer what replicas share: leases
(:class:`SharedLeases`, answering with :class:`TouchedLeases`) and spent join tokens (:class:`SpentTokens`).
"""

from typing import TYPE_CHECKING

from hodei._lazy import lazy_names
from hodei.ports import SharedLeases, SpentTokens, TouchedLeases
from hodei.stores._memory import MemoryRegistryStore
from hodei.stores._sqlite import SqliteRegistryStore

if TYPE_CHECKING:
    from hodei.stores._postgres import PostgresRegistryStore
    from hodei.stores._postgres_leadership import PostgresLeadership
    from hodei.stores._postgres_relay import PostgresEventRelay

__all__ = [
    "MemoryRegistryStore",
    "PostgresEventRelay",
    "PostgresLeadership",
    "PostgresRegistryStore",
    "SharedLeases",
    "SpentTokens",
    "SqliteRegistryStore",
    "TouchedLeases",
]

__getattr__ = lazy_names(
    __name__,
    {
        "PostgresEventRelay": "hodei.stores._postgres_relay",
        "PostgresLeadership": "hodei.stores._postgres_leadership",
        "PostgresRegistryStore": "hodei.stores._postgres",
    },
)
