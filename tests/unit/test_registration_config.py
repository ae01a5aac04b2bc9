"""RegistrationConfig: its validation and the backoff policy it implies, computed without waiting."""

from __future__ import annotations

import pytest

from hodei.registration import RegistrationConfig


@pytest.mark.parametrize(("retry", "delay"), [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8)])
def test_default_backoff_doubles_from_100_ms(retry: int, delay: float) -> None:
    assert RegistrationConfig().backoff(retry, random_fraction=0.0) == delay


def test_random_fraction_defaults_to_no_jitter() -> None:
    assert RegistrationConfig().backoff(3) == 0.4


@pytest.mark.parametrize(("retry", "delay"), [(1, 1.0), (2, 3.0), (3, 5.0), (4, 5.0), (30, 5.0)])
def test_max_backoff_caps_the_nominal_delay(retry: int, delay: float) -> None:
    config = RegistrationConfig(base_backoff=1.0, backoff_multiplier=3.0, max_backoff=5.0, jitter=0.0)

    assert config.backoff(retry, random_fraction=0.999) == delay


def test_a_multiplier_of_one_gives_a_constant_delay() -> None:
    config = RegistrationConfig(base_backoff=0.25, backoff_multiplier=1.0)

    assert [config.backoff(n) for n in range(1, 6)] == [0.25] * 5


@pytest.mark.parametrize("retry", [1, 2, 5, 8])
@pytest.mark.parametrize("random_fraction", [0.0, 0.001, 0.25, 0.5, 0.75, 0.999])
@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5, 1.0])
def test_jitter_only_lengthens_the_delay_and_by_at_most_the_jitter_fraction(
    retry: int, random_fraction: float, jitter: float
) -> None:
    config = RegistrationConfig(jitter=jitter, max_backoff=2.0)
    nominal = min(2.0, 0.1 * 2.0 ** (retry - 1))

    delay = config.backoff(retry, random_fraction=random_fraction)

    assert nominal <= delay <= nominal * (1 + jitter)
    assert delay == pytest.approx(nominal * (1 + jitter * random_fraction), rel=1e-12)


def test_jitter_applies_on_top_of_the_capped_delay() -> None:
    config = RegistrationConfig(base_backoff=1.0, max_backoff=4.0, jitter=0.5)

    assert config.backoff(10, random_fraction=0.5) == 5.0


@pytest.mark.parametrize("retry", [0, -1])
def test_retry_numbers_below_one_are_refused(retry: int) -> None:
    with pytest.raises(ValueError, match=f"retry numbers start at 1, got {retry}"):
        RegistrationConfig().backoff(retry)


@pytest.mark.parametrize(("max_retries", "max_attempts"), [(0, 1), (1, 2), (3, 4), (10, 11)])
def test_max_attempts_is_one_more_than_max_retries(max_retries: int, max_attempts: int) -> None:
    assert RegistrationConfig(max_retries=max_retries).max_attempts == max_attempts


def test_defaults_are_as_documented() -> None:
    config = RegistrationConfig()

    assert config.max_retries == 3
    assert config.max_attempts == 4
    assert config.base_backoff == 0.1
    assert config.max_backoff == 5.0
    assert config.backoff_multiplier == 2.0
    assert config.jitter == 0.1
    assert config.registration_timeout == 5.0
    assert config.batch_size == 250  # measured: 250 per call beats 100 by a third (benchmarks/README.md)
    assert config.batch_concurrency == 8
    assert config.validate_before_send is True


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"max_retries": -1}, "max_retries must be >= 0, got -1"),
        ({"base_backoff": -0.001}, "base_backoff must be >= 0, got -0.001"),
        ({"base_backoff": -0.5}, "base_backoff must be >= 0, got -0.5"),
        (
            {"base_backoff": float("nan")},
            "base_backoff must be >= 0, got nan; max_backoff must be >= base_backoff, got 5.0",
        ),
        ({"base_backoff": 2.0, "max_backoff": 1.0}, "max_backoff must be >= base_backoff, got 1.0"),
        ({"base_backoff": 1.0, "max_backoff": 0.5}, "max_backoff must be >= base_backoff, got 0.5"),
        ({"backoff_multiplier": 0.5}, "backoff_multiplier must be >= 1, got 0.5"),
        ({"jitter": -0.1}, "jitter must be between 0 and 1, got -0.1"),
        ({"jitter": 1.01}, "jitter must be between 0 and 1, got 1.01"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1, got 1.5"),
        ({"registration_timeout": 0}, "registration_timeout must be > 0, got 0"),
        ({"registration_timeout": 0.0}, "registration_timeout must be > 0, got 0.0"),
        ({"registration_timeout": -1.0}, "registration_timeout must be > 0, got -1.0"),
        ({"batch_size": 0}, "batch_size must be between 1 and 1000, got 0"),
        ({"batch_size": 1001}, "batch_size must be between 1 and 1000, got 1001"),
        ({"batch_concurrency": 0}, "batch_concurrency must be >= 1, got 0"),
    ],
)
def test_an_invalid_value_is_refused_naming_its_field_its_rule_and_the_value_given(
    options: dict[str, object], said: str
) -> None:
    with pytest.raises(ValueError) as refused:
        RegistrationConfig(**options)  # type: ignore[arg-type]

    assert str(refused.value) == f"invalid RegistrationConfig: {said}"


def test_every_invalid_value_is_named_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        RegistrationConfig(max_retries=-1, jitter=2.0, batch_size=0)

    assert str(caught.value) == (
        "invalid RegistrationConfig: max_retries must be >= 0, got -1; "
        "jitter must be between 0 and 1, got 2.0; batch_size must be between 1 and 1000, got 0"
    )


@pytest.mark.parametrize(
    "options",
    [
        {"max_retries": 0},
        {"base_backoff": 0.0, "max_backoff": 0.0},
        {"backoff_multiplier": 1.0},
        {"jitter": 0.0},
        {"jitter": 1.0},
        {"batch_size": 1},
        {"batch_size": 1000},
        {"batch_concurrency": 1},
        {"registration_timeout": 0.5},
    ],
)
def test_values_at_the_edges_of_their_range_or_under_a_second_are_accepted(
    options: dict[str, object],
) -> None:
    config = RegistrationConfig(**options)  # type: ignore[arg-type]

    assert {name: getattr(config, name) for name in options} == options


@pytest.mark.parametrize("fraction", [-0.01, 1.0, 1.5])
def test_a_random_fraction_outside_zero_to_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="random_fraction"):
        RegistrationConfig().backoff(1, fraction)
