"""How the PostgreSQL store runs a call: on a pooled connection, in a transaction, and again when it lost a race
with another replica or its connection broke (the retry policy). What the driver raises is read by
:mod:`hodei.stores._postgres_errors`; this module decides what to do about it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from hodei.errors import StoreUnavailable
from hodei.stores._postgres_errors import RACES, Broken, RaceLost, translated

__all__ = ["Db", "retrying"]

T = TypeVar("T")
Db: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"

_RACE_ATTEMPTS = 10


async def retrying(
    pool: asyncpg.Pool, store: str, work: Callable[[Db], Awaitable[T]], *, transaction: bool = True
) -> T:
    """Run ``work`` on a connection of ``pool`` (in a transaction unless told otherwise; ``store`` names the
    database in the log, as :func:`~hodei.stores._postgres_errors.dsn_hint` quotes it), and run it again when

    - it lost a race with another replica (a fresh snapshot decides again), or
    - its connection was dead (the database restarted, or killed the session, since the pool last used
      it): the next attempts take other connections, and a pool whose connections all died reconnects.
      Writes are safe to repeat: an upsert or a change applied twice leaves what applying it once does.

    A database that stays unreachable, or races lost too often, is :class:`StoreUnavailable`.
    """
    races = broken = 0
    while True:
        try:
            with translated(store):
                async with pool.acquire() as db:
                    if not transaction:
                        return await work(db)
                    async with db.transaction():
                        return await work(db)
        except (RaceLost, *RACES) as error:
            races += 1
            if races == _RACE_ATTEMPTS:
                raise StoreUnavailable("the registry database is too contended now") from error
        except Broken as error:
            broken += 1
            if broken > pool.get_max_size():
                raise StoreUnavailable(str(error)) from error.__cause__
