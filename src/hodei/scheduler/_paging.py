"""Pages of the registry's listing: their sizes, and the token that says where the next one starts (the last
worker id of a page, opaque to the client; one this scheduler did not issue is refused, naming ``page_token``)."""

from __future__ import annotations

import base64
import binascii

from hodei.domain import FieldViolation
from hodei.errors import InvalidWorkerData

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_BYTES", "MAX_PAGE_SIZE", "decode_page_token", "encode_page_token"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PAGE_BYTES = 1024 * 1024
"""A page ends before the record that would take its encoded size past this (a page holds one record at
least): 1,000 workers with the most labels allowed would be ~22 MB, more than a client accepts."""


def encode_page_token(last_worker_id: str) -> str:
    return base64.urlsafe_b64encode(last_worker_id.encode()).decode()


def decode_page_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidWorkerData(
            "page_token is not a token this scheduler issued",
            violations=[FieldViolation("page_token", "is not a token this scheduler issued")],
        ) from exc
