"""How protobuf lays out a field on the wire, for the messages encoded once per kind and framed per worker
(:mod:`._answers`, :class:`._records.RequestEncoder`): a field is its tag (field number and wire type) and its
value; a varint is 7 bits a byte, low first; a length-delimited field (a string, a message) is its tag, its
length and its bytes. Fields may come in any order, and the message parsed from them is the same."""

from __future__ import annotations

__all__ = ["LENGTH_DELIMITED", "UINT64_END", "VARINT", "field", "tag", "uint64_field", "varint"]

VARINT = 0
LENGTH_DELIMITED = 2
UINT64_END = 1 << 64  # the first value a uint64 field cannot hold

_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**64) as a varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(key: bytes, value: bytes) -> bytes:
    """A length-delimited field: its ``key`` (from :func:`tag`), then ``value``'s length and bytes."""
    return key + varint(len(value)) + value


def uint64_field(key: bytes, value: int) -> bytes:
    """A uint64 field as proto3 writes it: its ``key`` and ``value`` as a varint, or nothing for 0."""
    return key + varint(value) if value else b""
