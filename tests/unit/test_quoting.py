"""Client text is echoed short: quoted prefixes, at most 20 violations and a count, a status always < 8 KiB."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from hodei._quoting import clip, driver_message, quote_short
from hodei._violations import MAX_ERROR_BYTES, MAX_VIOLATIONS, cap_violations, fit_violations
from hodei.domain import FieldViolation
from hodei.errors import MAX_MESSAGE_LENGTH, ErrorCode, InvalidWorkerData, scheduler_error_for
from hodei.transport import _codec as codec
from hodei.transport._status import MAX_STATUS_BYTES, status_trailer, wire_message


def test_short_text_is_quoted_whole_and_long_text_by_a_prefix_and_its_length() -> None:
    assert quote_short("w-1") == "'w-1'"
    assert quote_short("a." * 5000) == f"'{'a.' * 32}'… (10000 chars)"
    assert quote_short("x" * 65) == f"'{'x' * 64}'… (65 chars)"
    assert quote_short("x" * 64) == f"'{'x' * 64}'"


def test_quoted_text_is_ascii_so_no_escape_sequence_reaches_a_terminal() -> None:
    assert quote_short("\x1b]8;;http://evil\x07é\x00") == "'\\x1b]8;;http://evil\\x07\\xe9\\x00'"


def test_clip_keeps_short_text_as_it_is() -> None:
    assert clip("w-1") == "w-1"
    assert clip("a" * 100, 10) == "aaaaaaaaaa… (100 chars)"


def _violations(count: int) -> list[FieldViolation]:
    return [FieldViolation(f"metadata.labels['k{n}']", "key must be …") for n in range(count)]


def test_at_most_twenty_violations_are_listed_and_the_rest_counted() -> None:
    capped = cap_violations(_violations(300))

    assert capped[:MAX_VIOLATIONS] == _violations(MAX_VIOLATIONS)
    assert capped[MAX_VIOLATIONS:] == [FieldViolation("…", "and 280 more violations not listed")]
    assert cap_violations(capped) == capped  # idempotent: a client decoding a capped error keeps it
    assert cap_violations(_violations(21)) == _violations(21)


def test_an_error_caps_its_message_and_its_violations() -> None:
    error = InvalidWorkerData("x" * 10_000, violations=_violations(300))

    assert len(error.message) == MAX_MESSAGE_LENGTH + len("… (10000 chars)")
    assert len(error.violations) == MAX_VIOLATIONS + 1


def test_violations_that_do_not_fit_are_counted() -> None:
    huge = [FieldViolation("f" * 1000, "d" * 1000) for _ in range(20)]

    fitted = fit_violations(huge, message="m" * 1000)

    assert all(len(v.field) <= 256 + 20 and len(v.description) <= 256 + 20 for v in fitted)
    assert fitted[-1].field == "…"
    assert fitted[-1].description == f"and {20 - len(fitted) + 1} more violations not listed"


texts = st.text(max_size=3000) | st.text(alphabet="😀\x00é[/]", max_size=3000)
violations = st.lists(st.builds(FieldViolation, texts, texts), max_size=400)


@settings(max_examples=200, deadline=None)
@given(
    code=st.sampled_from(list(ErrorCode)),
    message=texts,
    found=violations,
    retry_after=st.none() | st.floats(0, 1e6),
)
def test_any_error_encodes_under_eight_kib_as_a_status_and_as_a_batch_entry(
    code: ErrorCode, message: str, found: list[FieldViolation], retry_after: float | None
) -> None:
    error = scheduler_error_for(code, message, violations=found, retry_after=retry_after)

    details = b"".join(value for _, value in status_trailer(error))
    assert len(details) < MAX_STATUS_BYTES
    # gRPC's trailers (at most 16 KiB): the details base64-encoded, the message with each non-ASCII byte
    # percent-encoded into three.
    assert len(base64.b64encode(details)) + 3 * len(wire_message(error.message).encode()) < 16 * 1024 - 1024
    entry = codec.registration_result_to_proto("w-1", error)
    assert len(entry.error.SerializeToString()) < MAX_ERROR_BYTES


def test_a_driver_message_is_kept_whole_up_to_200_characters_and_clipped_beyond() -> None:
    assert driver_message(ValueError("database is locked")) == "database is locked"
    assert driver_message(ValueError("x" * 200)) == "x" * 200
    assert driver_message(ValueError("x" * 5000)) == "x" * 200 + "… (5000 chars)"
