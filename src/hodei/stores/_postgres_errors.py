"""How the PostgreSQL store reads what the driver raises: each error becomes a :class:`~hodei.errors.StoreError`
kind here and only here (:func:`translated`), and a DSN is quoted without its password (:func:`dsn_hint`)."""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import Iterator

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

from hodei._quoting import driver_message
from hodei.errors import StoreRefusedData, StoreUnavailable

__all__ = ["RACES", "TROUBLE", "UNREACHABLE", "Broken", "RaceLost", "dsn_hint", "translated"]

log = logging.getLogger(__name__)

# The server went away (stopped, restarted, terminated this session) or the connection broke under a call.
UNREACHABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
RACES = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# What a connection of its own (the relay's, the leader lock's) raises when the database dropped it or is out of
# reach: a statement on a connection whose session was just terminated raises InternalClientError, InterfaceError
# or ConnectionDoesNotExistError.
TROUBLE = (*UNREACHABLE, TimeoutError, asyncpg.PostgresError)
# A value the server refuses (SQLSTATE class 22), or one the client cannot encode for it.
_REFUSED_DATA = (asyncpg.DataError, ClientDataError, UnicodeEncodeError)


class RaceLost(Exception):
    """Another replica created a row this transaction meant to create: run the transaction again."""


class Broken(StoreUnavailable):
    """The call's connection broke, or none could be made: another connection may do (the store tries again)."""


@contextlib.contextmanager
def translated(store: str) -> Iterator[None]:
    """Every error of the driver in a call to ``store`` (its DSN as :func:`dsn_hint` quotes it) becomes a
    :class:`StoreError` kind, here and only here:

    - data the database cannot hold (a number beyond its range, a NUL in text): :class:`StoreRefusedData`;
    - a connection that broke under the call, or could not be made: ``Broken`` (a :class:`StoreUnavailable`
      that the store tries again on another connection);
    - anything else the database answers (read-only after a failover, too many connections, a cancelled
      statement, an error nobody foresaw): :class:`StoreUnavailable`, not tried again.

    Lost races (deadlock, serialization failure) pass through, for the store to run the transaction again.
    The client hears that the registry database cannot be used; the log says which, and why.
    """
    try:
        yield
    except _REFUSED_DATA as error:
        raise StoreRefusedData(
            f"the registry database cannot hold this data ({type(error).__name__})"
        ) from error
    except UNREACHABLE as error:
        log.warning("store.unreachable", extra={"store": store, "error": driver_message(error)})
        raise Broken("the registry database is unreachable") from error
    except RACES:
        raise
    except asyncpg.PostgresError as error:
        log.warning("store.refused_call", extra={"store": store, "error": driver_message(error)})
        raise StoreUnavailable(
            f"the registry database cannot be used now ({type(error).__name__})"
        ) from error


def dsn_hint(dsn: str) -> str:
    """The DSN without any password (in ``user:password@`` or in the query), for messages and logs."""
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        netloc = f"{credentials.split(':', 1)[0]}@{host}"
    query = "&".join(
        item for item in parts.query.split("&") if item and "password" not in item.split("=", 1)[0].lower()
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
