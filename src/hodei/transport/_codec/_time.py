"""Timestamps on the wire, both ways: one conversion for every message (cached: a batch's records share
their time)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["moment", "moment_of", "timestamp", "timestamp_of"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: datetime | None) -> Timestamp | None:
    return None if moment is None else timestamp_of(moment)


@functools.lru_cache(maxsize=1024)
def timestamp_of(moment: datetime) -> Timestamp:
    # Every record of a batch has the same time, and a message given to a constructor is copied: one
    # conversion serves the whole batch. Plain arithmetic, as Timestamp.FromDatetime goes through time tuples.
    delta = moment - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def moment(stamp: Timestamp, present: bool) -> datetime | None:
    return moment_of(stamp) if present else None


def moment_of(stamp: Timestamp) -> datetime:
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
