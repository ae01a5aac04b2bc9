"""Settings refused in words an operator can act on, and the error text a scheduler error carries: the tests
that kill what `make mutation` found surviving in registration/_config.py and errors.py."""

from __future__ import annotations

import re

import pytest

from hodei.errors import ErrorCode, scheduler_error_for
from hodei.registration import RegistrationConfig


@pytest.mark.parametrize(
    ("setting", "value", "rule"),
    [
        ("max_retries", -1, ">= 0"),
        ("base_backoff", -0.5, ">= 0"),
        ("backoff_multiplier", 0.5, ">= 1"),
        ("jitter", 1.5, "between 0 and 1"),
        ("registration_timeout", 0.0, "> 0"),
        ("batch_size", 1001, "between 1 and 1000"),
        ("batch_concurrency", 0, ">= 1"),
    ],
)
def test_a_bad_setting_is_refused_with_its_rule_and_value(setting: str, value: object, rule: str) -> None:
    with pytest.raises(ValueError) as refused:
        RegistrationConfig(**{setting: value})  # type: ignore[arg-type]

    assert str(refused.value) == f"invalid RegistrationConfig: {setting} must be {rule}, got {value!r}"


def test_a_max_backoff_below_the_base_backoff_is_refused_naming_the_base() -> None:
    with pytest.raises(ValueError, match=re.escape("max_backoff must be >= base_backoff, got 0.5")):
        RegistrationConfig(base_backoff=1.0, max_backoff=0.5)


def test_a_registration_timeout_under_a_second_is_allowed() -> None:
    assert RegistrationConfig(registration_timeout=0.5).registration_timeout == 0.5


def test_a_scheduler_errors_exception_argument_is_its_message() -> None:
    error = scheduler_error_for(ErrorCode.UNAVAILABLE, "connection refused")

    assert error.args == ("connection refused",)
