"""One value's encoding kept for the next call with the very same object.

The records of one shape share their labels (the shape's mapping), and those of one batch their timestamps (the
batch's moment): encoding rows or sizing a group, the same object comes again and again, and is encoded once.
For values that never change (a datetime is immutable; a record's labels are read-only: the domain copies a dict
it is given, and takes a ``MappingProxyType`` it is given as frozen, as it does for the record's verdict);
compared by identity, never by equality, so a lookup costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["SameAsLast"]

T = TypeVar("T")
R = TypeVar("R")

_NOTHING = object()


class SameAsLast(Generic[T, R]):
    """``encode`` as a function, remembering its last value and result. Safe from several threads: the pair is
    replaced whole, so a caller sees the last value with its own result or computes afresh."""

    __slots__ = ("_encode", "_last")

    def __init__(self, encode: Callable[[T], R]) -> None:
        self._encode = encode
        self._last: tuple[object, R | None] = (_NOTHING, None)

    def __call__(self, value: T) -> R:
        last = self._last
        if last[0] is value:
            return last[1]  # type: ignore[return-value]
        encoded = self._encode(value)
        self._last = (value, encoded)
        return encoded
