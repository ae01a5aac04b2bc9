"""hypothesis strategies for what a client may send the scheduler: valid values, values just past every limit of
the domain (its MAX_* constants), values of the wrong shape, and bytes that are not a protobuf message at all.

Each field strategy mixes the three on purpose, so that a whole request is sometimes valid, often invalid in one
field, and sometimes invalid in several.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

from hodei.domain import (
    MAX_CPU_CORES,
    MAX_DISK_MB,
    MAX_GPU_COUNT,
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_MEMORY_MB,
    MAX_NAME_LENGTH,
    MAX_WORKER_ID_LENGTH,
    WorkerType,
)
from hodei.transport._codec import pb

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)

_ALNUM = string.ascii_letters + string.digits
_WHITESPACE = [" ", "\t", "\n", "\r", "\u00a0", "\u2003", "\u3000"]
# Characters the domain refuses in ids and names: punctuation, whitespace, non-ASCII letters and digits
# (Unicode digits and letters must not pass for ASCII ones), control characters, emoji.
_BAD_CHARS = st.sampled_from(
    [*"/:@ !#$%&*+,;<=>?[]{}|~^`'\"\\", *_WHITESPACE, "é", "ß", "Ω", "\u0661", "\uff15", "\x00", "\x7f", "😀"]
)


def _ascii(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=min_size, max_size=max_size)


def _insert(parts: tuple[str, str, int]) -> str:
    text, bad, where = parts
    at = where % (len(text) + 1)
    return text[:at] + bad + text[at:]


def _spoiled(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid value with one bad character put in at some place (start, middle or end)."""
    return st.tuples(valid, _BAD_CHARS, st.integers(0, 2**16)).map(_insert)


def _stretched(parts: tuple[int, str]) -> str:
    n, pattern = parts
    middle = (pattern * (n // len(pattern) + 1))[: max(n - 2, 0)]
    return ("a" + middle + "z")[:n]


def _of_length(alphabet: str, lengths: list[int]) -> st.SearchStrategy[str]:
    """Strings of exactly these lengths (the limits and their neighbours), starting and ending with a letter.
    The middle repeats a short drawn pattern: a string of 512 characters drawn one by one costs hypothesis
    512 choices, and the limit under test is the length, not which characters fill it."""
    return st.tuples(st.sampled_from(lengths), _ascii(alphabet, 1, 8)).map(_stretched)


# -- worker ids ---------------------------------------------------------------------------------------------

valid_worker_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True),
    _of_length(_ALNUM + "._-", [1, MAX_WORKER_ID_LENGTH - 1, MAX_WORKER_ID_LENGTH]),
)

invalid_worker_ids = st.one_of(
    st.just(""),
    _of_length(_ALNUM, [MAX_WORKER_ID_LENGTH + 1, MAX_WORKER_ID_LENGTH + 2, 4 * MAX_WORKER_ID_LENGTH]),
    st.sampled_from([".hidden", "-dash", "_under", " lead", "trail ", "a b", "a\nb", *_WHITESPACE]),
    _spoiled(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)),
    st.text(max_size=40),  # anything at all: unicode, control characters, the odd valid one
)

worker_ids = st.one_of(valid_worker_ids, invalid_worker_ids)

# -- capabilities ---------------------------------------------------------------------------------------------


def _around(limit: int) -> list[int]:
    return [limit - 1, limit, limit + 1]


def _capability(low: int, high: int, wire: tuple[int, int]) -> st.SearchStrategy[int]:
    """Values of one capability: inside its domain range, at and around both ends, and anywhere on the wire."""
    edges = sorted(v for v in {*_around(low), *_around(high), 0, -1, 1, *wire} if wire[0] <= v <= wire[1])
    return st.one_of(
        st.integers(low, high),
        st.sampled_from(edges),
        st.integers(*wire),
    )


cpu_cores = _capability(1, MAX_CPU_CORES, INT32)
memory_mb = _capability(1, MAX_MEMORY_MB, INT64)
disk_mb = _capability(0, MAX_DISK_MB, INT64)
gpu_count = _capability(0, MAX_GPU_COUNT, INT32)

capabilities = st.builds(
    pb.WorkerCapabilities, cpu_cores=cpu_cores, memory_mb=memory_mb, disk_mb=disk_mb, gpu_count=gpu_count
)
valid_capabilities = st.builds(
    pb.WorkerCapabilities,
    cpu_cores=st.integers(1, MAX_CPU_CORES),
    memory_mb=st.integers(1, MAX_MEMORY_MB),
    disk_mb=st.integers(0, MAX_DISK_MB),
    gpu_count=st.integers(0, MAX_GPU_COUNT),
)

# -- labels --------------------------------------------------------------------------------------------------

valid_label_keys = st.one_of(
    st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,20}[A-Za-z0-9])?", fullmatch=True),
    _of_length(_ALNUM + "._/-", [1, MAX_LABEL_KEY_LENGTH - 1, MAX_LABEL_KEY_LENGTH]),
)
label_keys = st.one_of(
    valid_label_keys,
    st.just(""),
    _of_length(_ALNUM, [MAX_LABEL_KEY_LENGTH + 1, 2 * MAX_LABEL_KEY_LENGTH]),
    st.sampled_from(["-lead", "trail-", "/", "a/", ".x", "a b", "k=v"]),
    _spoiled(valid_label_keys),
    st.text(max_size=20),
)
# Any text but control characters (Unicode's Cc: C0 with NUL, DEL, C1): markup such as "[/]" included.
valid_label_values = st.one_of(
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20),
    st.sampled_from(["[/]", "[bold]x[/bold]", "[link=http://x]y[/link]", "\\[", "é", "😀"]),
    _of_length(_ALNUM, [0, MAX_LABEL_VALUE_LENGTH - 1, MAX_LABEL_VALUE_LENGTH]),
)
label_values = st.one_of(
    valid_label_values,
    _of_length(_ALNUM, [MAX_LABEL_VALUE_LENGTH + 1, 4 * MAX_LABEL_VALUE_LENGTH]),
    st.text(max_size=20),  # control characters too: NUL, escape sequences
    st.sampled_from(["\x00", "a\x1b]8;;http://x\x07b", "\x1b[2J", "\x7f", "\x85", "\x9b31m"]),
)


def _many_labels(count: int) -> dict[str, str]:
    return {f"label-{i}": str(i) for i in range(count)}


valid_labels = st.one_of(
    st.dictionaries(valid_label_keys, valid_label_values, max_size=4),
    st.sampled_from([MAX_LABELS - 1, MAX_LABELS]).map(_many_labels),
)
labels = st.one_of(
    st.dictionaries(label_keys, label_values, max_size=5),
    st.sampled_from([MAX_LABELS - 1, MAX_LABELS, MAX_LABELS + 1, 2 * MAX_LABELS]).map(_many_labels),
    # Too many labels and bad ones at once: every violation is named, the count first.
    st.tuples(st.dictionaries(label_keys, label_values, min_size=1, max_size=3)).map(
        lambda extra: _many_labels(MAX_LABELS) | extra[0]
    ),
)

# -- pools, hostnames, agent versions, worker types --------------------------------------------------------

valid_names = st.one_of(
    st.just(""),  # not given: allowed
    st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,30}[A-Za-z0-9])?", fullmatch=True),
    _of_length(_ALNUM + "._-", [1, MAX_NAME_LENGTH - 1, MAX_NAME_LENGTH]),
)
names = st.one_of(
    valid_names,
    _of_length(_ALNUM, [MAX_NAME_LENGTH + 1, 2 * MAX_NAME_LENGTH]),
    st.sampled_from(["-lead", "trail.", "_x", "a b", "host:22", "ümlaut", " "]),
    _spoiled(st.from_regex(r"[A-Za-z0-9]{1,10}", fullmatch=True)),
    st.text(max_size=20),
)

valid_worker_types = st.sampled_from([t.value for t in WorkerType])
worker_types = st.one_of(
    valid_worker_types,
    st.sampled_from(["", "Docker", "DOCKER", " docker", "docker ", "vm", "unknown"]),
    st.text(max_size=12),
)

valid_incarnations = st.one_of(
    st.sampled_from([0, 1, 2, 2**32 - 1, 2**32, 2**63 - 1]),
    st.integers(0, 2**63 - 1),
    st.integers(0, 5),  # small ones, so that registrations of one worker meet and fence each other
)
# The wire's uint64 holds more than a store's integer column: 2**63 and above are refused.
incarnations = st.one_of(valid_incarnations, st.sampled_from([2**63, 2**64 - 1]), st.integers(*UINT64))

# -- whole messages --------------------------------------------------------------------------------------------


def _metadata(
    worker_type: st.SearchStrategy[str],
    label_maps: st.SearchStrategy[dict[str, str]],
    name: st.SearchStrategy[str],
) -> st.SearchStrategy[pb.WorkerMetadata]:
    return st.builds(
        pb.WorkerMetadata,
        worker_type=worker_type,
        labels=label_maps,
        pool=name,
        hostname=name,
        agent_version=name,
    )


def _request(
    ids: st.SearchStrategy[str],
    caps: st.SearchStrategy[pb.WorkerCapabilities | None],
    metadata: st.SearchStrategy[pb.WorkerMetadata | None],
    incarnation: st.SearchStrategy[int] = incarnations,
) -> st.SearchStrategy[pb.RegisterWorkerRequest]:
    return st.builds(
        pb.RegisterWorkerRequest,
        worker_id=ids,
        capabilities=caps,  # None: the field is absent
        metadata=metadata,
        incarnation=incarnation,
    )


# A small set of ids for valid requests, so that later examples refresh, fence and keep earlier ones.
_REUSED_IDS = st.sampled_from([f"fuzz-{i}" for i in range(8)])

valid_register_worker_requests = _request(
    st.one_of(_REUSED_IDS, valid_worker_ids),
    valid_capabilities,
    _metadata(valid_worker_types, valid_labels, valid_names),
    valid_incarnations,
)

register_worker_requests = st.one_of(
    valid_register_worker_requests,
    _request(
        st.one_of(_REUSED_IDS, worker_ids),
        st.one_of(st.none(), capabilities),
        st.one_of(st.none(), _metadata(worker_types, labels, names)),
    ),
)

register_workers_requests = st.builds(
    pb.RegisterWorkersRequest,
    workers=st.lists(st.one_of(valid_register_worker_requests, register_worker_requests), max_size=8),
)

# ListWorkersRequest.statuses is the one enum a client sends: proto3 enums are open, any int32 arrives.
list_workers_requests = st.builds(
    pb.ListWorkersRequest,
    statuses=st.lists(
        st.one_of(st.sampled_from(list(pb.WorkerStatus.values())), st.integers(*INT32)), max_size=4
    ),
    worker_type=st.one_of(st.just(""), worker_types),
    labels=st.dictionaries(label_keys, label_values, max_size=3),
    page_size=st.one_of(st.integers(0, 3), st.integers(*INT32)),
)

# -- bytes on the wire -------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def _flip(data: bytes, where: int, value: int) -> bytes:
    if not data:
        return bytes([value])
    index = where % len(data)
    return data[:index] + bytes([value]) + data[index + 1 :]


def _nest(depth: int) -> bytes:
    """A RegisterWorkersRequest whose entries' metadata nests unknown groups ``depth`` deep."""
    inner = b""
    for _ in range(depth):
        inner = _field(15, 3, b"") + inner + _field(15, 4, b"")
    return _length_delimited(1, _length_delimited(3, inner))


_INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\x80b"]

corrupt_bytes = st.one_of(
    # A valid message, cut short or with bytes changed.
    st.tuples(register_workers_requests, st.integers(1, 2**16)).map(
        lambda parts: parts[0].SerializeToString()[: -(parts[1] % 16 + 1)]
    ),
    st.tuples(register_worker_requests, st.integers(0, 2**16), st.integers(0, 255)).map(
        lambda parts: _flip(parts[0].SerializeToString(), parts[1], parts[2])
    ),
    # A string field (worker_id = 1; metadata.worker_type inside field 3) that is not UTF-8.
    st.sampled_from(_INVALID_UTF8).map(lambda bad: _length_delimited(1, bad)),
    st.sampled_from(_INVALID_UTF8).map(lambda bad: _length_delimited(3, _length_delimited(1, bad))),
    # A length that runs past the end; a varint that never ends; field number 0; an end-group with no start.
    st.integers(1, 2**20).map(lambda n: _field(1, 2, _varint(n + 4)) + b"abcd"[: n % 4]),
    st.integers(1, 9).map(lambda n: _field(4, 0, b"\xff" * n)),
    st.sampled_from([b"\x00", b"\x02\x00", b"\x0c", b"\x24", b"\x0b", b"\x07", b"\x0f"]),
    # Nesting deeper than protobuf's recursion limit.
    st.integers(101, 200).map(_nest),
    # Anything at all (much of it parses, as unknown fields: then it is judged as the message it decodes to).
    st.binary(max_size=64),
)
