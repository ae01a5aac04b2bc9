"""What is kept to save work done before: a bounded map of recent values (:class:`Recent`), and one value's
encoding kept for the next call with the very same object (:class:`SameAsLast`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Recent", "SameAsLast"]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")
R = TypeVar("R")

_NOTHING = object()


class Recent(Generic[K, V]):
    """At most ``size`` values by key, the oldest dropped first."""

    __slots__ = ("_size", "_values")

    def __init__(self, size: int) -> None:
        self._size = size
        self._values: dict[K, V] = {}

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: K) -> V | None:
        return self._values.get(key)

    def put(self, key: K, value: V) -> None:
        if len(self._values) >= self._size:
            del self._values[next(iter(self._values))]
        self._values[key] = value


class SameAsLast(Generic[T, R]):
    """``encode`` as a function, remembering its last value and result. Safe from several threads: the pair is
    replaced whole, so a caller sees the last value with its own result or computes afresh.

    The records of one shape share their labels (the shape's mapping), and those of one batch their timestamps
    (the batch's moment): encoding rows or sizing a group, the same object comes again and again, and is encoded
    once. For values that never change (a datetime is immutable; a record's labels are read-only: the domain
    copies a dict it is given, and takes a ``MappingProxyType`` it is given as frozen, as it does for the
    record's verdict); compared by identity, never by equality, so a lookup costs nothing."""

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
