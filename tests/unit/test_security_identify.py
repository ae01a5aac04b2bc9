"""Reading a token of any kind (``identify``) and admitting a join token already read (``admit_join``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hodei.security import (
    MAX_TOKEN_LENGTH,
    AuthError,
    AuthFailure,
    JoinClaims,
    OperatorClaims,
    PermissionDenied,
    TokenAuthority,
    TokenKey,
    TokenKind,
    Unauthenticated,
    WorkerClaims,
)
from hodei.testing import FakeClock

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
SECRET = b"i" * 64


@pytest.fixture(params=["hmac", "ed25519"])
def authority(request: pytest.FixtureRequest) -> TokenAuthority:
    key: TokenKey = SECRET if request.param == "hmac" else Ed25519PrivateKey.generate()
    return TokenAuthority(key, clock=lambda: T0)


def refusal(call: object) -> AuthError:
    assert callable(call)
    with pytest.raises(AuthError) as raised:
        call()
    return raised.value


def test_identify_reads_each_kind_from_the_token_itself(authority: TokenAuthority) -> None:
    join = authority.identify(authority.mint_join_token("w-1", ttl=60, pool="p", labels={"a": "b"}))
    worker = authority.identify(authority.mint_worker_credential("w-2", 7))
    operator = authority.identify(authority.mint_operator_token("alice"))

    assert isinstance(join, JoinClaims)
    assert (join.worker_id, join.pool, dict(join.labels or {})) == ("w-1", "p", {"a": "b"})
    assert isinstance(worker, WorkerClaims)
    assert (worker.worker_id, worker.incarnation) == ("w-2", 7)
    assert isinstance(operator, OperatorClaims)
    assert operator.name == "alice"


def test_identify_spends_no_single_use_join_token(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60)

    authority.identify(token)
    authority.identify(token)

    assert authority.verify_join_token(token, worker_id="w-1").worker_id == "w-1"


@pytest.mark.parametrize("token", [None, ""])
def test_identify_without_a_token_is_unauthenticated_missing(
    authority: TokenAuthority, token: str | None
) -> None:
    error = refusal(lambda: authority.identify(token))

    assert type(error) is Unauthenticated
    assert (error.reason, error.kind, error.message) == (AuthFailure.MISSING, None, "no credential")


@pytest.mark.parametrize(
    "garbage",
    [
        "not-a-token",
        "a.b.c",
        "x" * (MAX_TOKEN_LENGTH + 1),
        jwt.encode({"aud": "somebody-else", "sub": "w"}, SECRET, algorithm="HS256"),
        jwt.encode({"aud": ["hodei-join"], "sub": "w"}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": "w"}, SECRET, algorithm="HS256"),
    ],
    ids=["text", "three-dots", "too-long", "foreign-audience", "audience-list", "no-audience"],
)
def test_identify_of_garbage_or_a_foreign_token_is_unauthenticated_malformed(
    authority: TokenAuthority, garbage: str
) -> None:
    error = refusal(lambda: authority.identify(garbage))

    assert type(error) is Unauthenticated
    assert (error.reason, error.message) == (AuthFailure.MALFORMED, "malformed credential")


def test_identify_of_a_token_signed_by_another_key_is_unauthenticated(authority: TokenAuthority) -> None:
    forged = TokenAuthority(b"f" * 64).mint_operator_token("mallory")

    error = refusal(lambda: authority.identify(forged))

    assert type(error) is Unauthenticated
    assert (error.reason, error.kind) == (AuthFailure.BAD_SIGNATURE, TokenKind.OPERATOR)


def test_identify_of_an_expired_token_is_unauthenticated(authority: TokenAuthority) -> None:
    token = authority.mint_operator_token("alice", ttl=10)
    later = T0 + timedelta(seconds=10 + authority.leeway)

    error = refusal(lambda: authority.identify(token, now=later))

    assert (type(error), error.reason) == (Unauthenticated, AuthFailure.EXPIRED)


def test_identify_of_a_join_token_with_a_malformed_binding_is_unauthenticated() -> None:
    authority = TokenAuthority(SECRET, clock=lambda: T0)
    now = int(T0.timestamp())
    token = jwt.encode(
        {"aud": "hodei-join", "sub": "w-1", "jti": "j", "iat": now, "exp": now + 60, "pool": 3},
        SECRET,
        algorithm="HS256",
    )

    error = refusal(lambda: authority.identify(token))

    assert (type(error), error.reason, error.kind) == (Unauthenticated, AuthFailure.MALFORMED, TokenKind.JOIN)


def test_identify_of_a_worker_credential_with_a_malformed_incarnation_is_unauthenticated() -> None:
    authority = TokenAuthority(SECRET, clock=lambda: T0)
    token = jwt.encode(
        {"aud": "hodei-worker", "sub": "w-1", "jti": "j", "iat": int(T0.timestamp()), "inc": "one"},
        SECRET,
        algorithm="HS256",
    )

    error = refusal(lambda: authority.identify(token))

    assert (type(error), error.reason, error.kind) == (
        Unauthenticated,
        AuthFailure.MALFORMED,
        TokenKind.WORKER,
    )


def test_admit_join_spends_the_token_once(authority: TokenAuthority) -> None:
    claims = authority.identify(authority.mint_join_token("w-1", ttl=60))
    assert isinstance(claims, JoinClaims)

    authority.admit_join(claims, worker_id="w-1", incarnation=1)
    error = refusal(lambda: authority.admit_join(claims, worker_id="w-1", incarnation=2))

    assert (type(error), error.reason) == (Unauthenticated, AuthFailure.REPLAYED)


def test_admit_join_refuses_another_worker_without_spending(authority: TokenAuthority) -> None:
    claims = authority.identify(authority.mint_join_token("w-1", ttl=60))
    assert isinstance(claims, JoinClaims)

    error = refusal(lambda: authority.admit_join(claims, worker_id="w-2"))

    assert (type(error), error.reason) == (PermissionDenied, AuthFailure.WRONG_WORKER)
    assert authority.admit_join(claims, worker_id="w-1") is claims


def test_a_reusable_join_token_is_admitted_again(authority: TokenAuthority) -> None:
    claims = authority.identify(authority.mint_join_token("w-1", ttl=60, single_use=False))
    assert isinstance(claims, JoinClaims)

    authority.admit_join(claims, worker_id="w-1")

    assert authority.admit_join(claims, worker_id="w-1") is claims


def test_a_refused_action_names_the_kind_and_the_action() -> None:
    error = AuthError.refusal(AuthFailure.WRONG_ACTION, kind=TokenKind.JOIN, action="ListWorkers")

    assert type(error) is PermissionDenied
    assert error.message == "a join token does not allow ListWorkers"


def test_a_token_identified_once_still_expires_on_time() -> None:
    clock = FakeClock(epoch=T0)
    authority = TokenAuthority(SECRET, clock=clock.wall)
    token = authority.mint_operator_token("alice", ttl=10)

    first = authority.identify(token)
    clock.advance(10 + authority.leeway)
    error = refusal(lambda: authority.identify(token))

    assert isinstance(first, OperatorClaims)
    assert (type(error), error.reason, error.kind) == (
        Unauthenticated,
        AuthFailure.EXPIRED,
        TokenKind.OPERATOR,
    )


def test_a_token_identified_once_is_not_valid_before_its_time_either() -> None:
    clock = FakeClock(epoch=T0)
    authority = TokenAuthority(SECRET, clock=clock.wall)
    token = authority.mint_worker_credential("w-1")
    authority.identify(token)

    error = refusal(lambda: authority.identify(token, now=T0 - timedelta(seconds=60)))

    assert (type(error), error.reason) == (Unauthenticated, AuthFailure.NOT_YET_VALID)


def test_a_replayed_join_token_is_refused_though_it_was_identified_before(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60)
    authority.admit_join(authority.identify(token), worker_id="w-1", incarnation=1)  # type: ignore[arg-type]

    again = authority.identify(token)
    assert isinstance(again, JoinClaims)
    error = refusal(lambda: authority.admit_join(again, worker_id="w-1", incarnation=2))

    assert error.reason is AuthFailure.REPLAYED


def test_identify_remembers_a_bounded_number_of_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    from hodei.security import _tokens as tokens

    monkeypatch.setattr(tokens, "IDENTIFIED_CACHE_SIZE", 3)
    authority = TokenAuthority(SECRET, clock=lambda: T0)
    minted = [authority.mint_operator_token(f"op-{i}") for i in range(5)]

    names = [authority.identify(token) for token in minted]
    first_again = authority.identify(minted[0])

    assert [n.name for n in names] == [f"op-{i}" for i in range(5)]  # type: ignore[union-attr]
    assert first_again == names[0]
    assert len(authority._identified) == 3
