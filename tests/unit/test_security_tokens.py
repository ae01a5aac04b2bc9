"""Join tokens, worker credentials and operator tokens: every way a token is refused, and with which error."""

from __future__ import annotations

import base64
import json
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hodei.errors import ErrorCode, HodeiError
from hodei.security import (
    DEFAULT_OPERATOR_TOKEN_TTL,
    MIN_SECRET_BYTES,
    AuthError,
    AuthFailure,
    MemoryJtiLedger,
    PermissionDenied,
    TokenAuthority,
    TokenKey,
    TokenKind,
    Unauthenticated,
    generate_secret,
    load_key,
)
from hodei.testing import FakeClock

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
SECRET = b"s" * 64  # long enough for HS512 too, so that PyJWT does not warn


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(epoch=T0)


@pytest.fixture(params=["hmac", "ed25519"])
def key(request: pytest.FixtureRequest) -> TokenKey:
    return SECRET if request.param == "hmac" else Ed25519PrivateKey.generate()


@pytest.fixture
def authority(key: TokenKey, clock: FakeClock) -> TokenAuthority:
    return TokenAuthority(key, clock=clock.wall)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def refused(call: Callable[[], object]) -> AuthError:
    with pytest.raises(AuthError) as raised:
        call()
    return raised.value


def forge_payload(token: str, **changes: object) -> str:
    """The token with its payload changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    encoded = base64.urlsafe_b64encode(json.dumps(claims | changes).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


# --- join tokens ---------------------------------------------------------------------------------------------


def test_join_token_round_trips_worker_pool_labels_and_times(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=300, pool="gpu", labels={"os": "linux"})

    claims = authority.verify_join_token(token, worker_id="w-1", pool="gpu", labels={"os": "linux"})

    assert claims.worker_id == "w-1"
    assert claims.pool == "gpu"
    assert dict(claims.labels or {}) == {"os": "linux"}
    assert claims.single_use is True
    assert claims.issued_at == T0
    assert claims.expires_at == at(300)
    assert len(claims.token_id) >= 16


def test_join_token_claims_say_what_pyjwt_reads_back(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60)
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})

    assert header["alg"] == authority.algorithm
    assert payload["aud"] == "hodei-join"
    assert payload["sub"] == "w-1"
    assert payload["exp"] - payload["iat"] == 60
    assert "pool" not in payload and "labels" not in payload


def test_each_join_token_has_its_own_random_id(authority: TokenAuthority) -> None:
    first = authority.verify_join_token(authority.mint_join_token("w-1", ttl=60), worker_id="w-1")
    second = authority.verify_join_token(authority.mint_join_token("w-1", ttl=60), worker_id="w-1")

    assert first.token_id != second.token_id


@pytest.mark.parametrize("token", [None, ""])
def test_no_join_token_is_unauthenticated(authority: TokenAuthority, token: str | None) -> None:
    error = refused(lambda: authority.verify_join_token(token, worker_id="w-1"))

    assert type(error) is Unauthenticated
    assert error.reason is AuthFailure.MISSING
    assert error.code is ErrorCode.UNAUTHENTICATED
    assert error.kind is TokenKind.JOIN
    assert error.worker_id == "w-1"
    assert str(error) == "no join token"


@pytest.mark.parametrize(
    "garbage",
    ["garbage", "a.b", "a.b.c", "...", "ünïcödé.ü.ü", "eyJhbGciOiJIUzI1NiJ9.e30", "x" * 5000],
)
def test_garbage_is_an_unauthenticated_malformed_token(authority: TokenAuthority, garbage: str) -> None:
    error = refused(lambda: authority.verify_join_token(garbage, worker_id="w-1"))

    assert type(error) is Unauthenticated
    assert error.reason is AuthFailure.MALFORMED
    assert str(error).startswith("malformed join token")


def test_a_truncated_token_is_refused(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60)

    for cut in (token[:-10], token.rsplit(".", 1)[0], token[: len(token) // 2]):
        error = refused(partial(authority.verify_join_token, cut, worker_id="w-1"))
        assert type(error) is Unauthenticated
        assert error.reason in (AuthFailure.MALFORMED, AuthFailure.BAD_SIGNATURE)


def test_join_token_is_good_until_its_expiry_plus_the_leeway(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60, single_use=False)

    authority.verify_join_token(token, worker_id="w-1", now=at(60 + authority.leeway - 1))
    error = refused(
        lambda: authority.verify_join_token(token, worker_id="w-1", now=at(60 + authority.leeway))
    )

    assert type(error) is Unauthenticated
    assert error.reason is AuthFailure.EXPIRED
    assert str(error) == "join token expired"


def test_expiry_follows_the_authority_clock_when_no_now_is_given(key: TokenKey, clock: FakeClock) -> None:
    authority = TokenAuthority(key, clock=clock.wall, leeway=0)
    token = authority.mint_join_token("w-1", ttl=30)

    clock.advance(30)
    error = refused(lambda: authority.verify_join_token(token, worker_id="w-1"))

    assert error.reason is AuthFailure.EXPIRED


def test_join_token_from_the_future_is_refused_beyond_the_leeway(key: TokenKey, clock: FakeClock) -> None:
    authority = TokenAuthority(key, clock=clock.wall, leeway=2)
    token = authority.mint_join_token("w-1", ttl=600, single_use=False)

    authority.verify_join_token(token, worker_id="w-1", now=at(-2))
    error = refused(lambda: authority.verify_join_token(token, worker_id="w-1", now=at(-3)))

    assert type(error) is Unauthenticated
    assert error.reason is AuthFailure.NOT_YET_VALID


def test_join_token_for_another_worker_is_permission_denied_and_not_spent(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60)

    error = refused(lambda: authority.verify_join_token(token, worker_id="w-2"))

    assert type(error) is PermissionDenied
    assert error.reason is AuthFailure.WRONG_WORKER
    assert error.code is ErrorCode.PERMISSION_DENIED
    assert error.worker_id == "w-2"
    assert str(error) == "join token is for another worker than 'w-2'"
    assert authority.verify_join_token(token, worker_id="w-1").worker_id == "w-1"


def test_join_token_binding_a_pool_admits_only_that_pool(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60, pool="gpu")

    for pool in ("cpu", None):
        error = refused(partial(authority.verify_join_token, token, worker_id="w-1", pool=pool))
        assert type(error) is PermissionDenied
        assert error.reason is AuthFailure.WRONG_POOL
    assert authority.verify_join_token(token, worker_id="w-1", pool="gpu").pool == "gpu"


def test_join_token_binding_labels_admits_exactly_those_labels(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60, labels={"os": "linux"})

    for labels in ({"os": "windows"}, {"os": "linux", "gpu": "yes"}, {}, None):
        error = refused(partial(authority.verify_join_token, token, worker_id="w-1", labels=labels))
        assert type(error) is PermissionDenied
        assert error.reason is AuthFailure.WRONG_LABELS
    authority.verify_join_token(token, worker_id="w-1", labels={"os": "linux"})


def test_join_token_binding_empty_labels_admits_a_worker_without_labels(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60, labels={}, single_use=False)

    assert authority.verify_join_token(token, worker_id="w-1").labels == {}
    error = refused(lambda: authority.verify_join_token(token, worker_id="w-1", labels={"a": "b"}))
    assert error.reason is AuthFailure.WRONG_LABELS


def test_join_token_binding_nothing_admits_any_pool_and_labels(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60)

    claims = authority.verify_join_token(token, worker_id="w-1", pool="any", labels={"k": "v"})

    assert claims.pool is None
    assert claims.labels is None


def test_replayed_single_use_join_token_is_unauthenticated(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60)
    authority.verify_join_token(token, worker_id="w-1", incarnation=1)

    error = refused(lambda: authority.verify_join_token(token, worker_id="w-1", incarnation=2))

    assert type(error) is Unauthenticated
    assert error.reason is AuthFailure.REPLAYED
    assert str(error) == "join token already used"


def test_a_single_use_join_token_admits_its_registration_again_when_retried(
    authority: TokenAuthority,
) -> None:
    token = authority.mint_join_token("w-1", ttl=60)

    first = authority.verify_join_token(token, worker_id="w-1", incarnation=1)
    retried = authority.verify_join_token(token, worker_id="w-1", incarnation=1)  # its answer was lost

    assert first == retried


def test_a_join_token_that_is_not_single_use_may_be_presented_again(authority: TokenAuthority) -> None:
    token = authority.mint_join_token("w-1", ttl=60, single_use=False)

    first = authority.verify_join_token(token, worker_id="w-1")
    second = authority.verify_join_token(token, worker_id="w-1")

    assert first == second
    assert first.single_use is False


def test_replicas_sharing_a_ledger_refuse_a_token_spent_at_the_other(key: TokenKey, clock: FakeClock) -> None:
    ledger = MemoryJtiLedger(clock=clock.wall)
    first, second = (
        TokenAuthority(key, ledger=ledger, clock=clock.wall),
        TokenAuthority(key, ledger=ledger, clock=clock.wall),
    )
    token = first.mint_join_token("w-1", ttl=60)

    first.verify_join_token(token, worker_id="w-1", incarnation=1)
    error = refused(lambda: second.verify_join_token(token, worker_id="w-1", incarnation=2))

    assert error.reason is AuthFailure.REPLAYED


def test_token_signed_with_another_secret_is_a_forgery() -> None:
    forger = TokenAuthority(b"f" * MIN_SECRET_BYTES)
    token = forger.mint_join_token("w-1", ttl=60)

    error = refused(lambda: TokenAuthority(SECRET).verify_join_token(token, worker_id="w-1"))

    assert type(error) is Unauthenticated
    assert error.reason is AuthFailure.BAD_SIGNATURE
    assert str(error) == "join token is not signed by a trusted key"


def test_token_signed_with_another_ed25519_key_is_a_forgery() -> None:
    token = TokenAuthority(Ed25519PrivateKey.generate()).mint_join_token("w-1", ttl=60)

    error = refused(
        lambda: TokenAuthority(Ed25519PrivateKey.generate()).verify_join_token(token, worker_id="w-1")
    )

    assert error.reason is AuthFailure.BAD_SIGNATURE


def test_token_with_a_changed_payload_is_a_forgery(authority: TokenAuthority) -> None:
    token = forge_payload(authority.mint_join_token("w-1", ttl=60), sub="w-2")

    error = refused(lambda: authority.verify_join_token(token, worker_id="w-2"))

    assert type(error) is Unauthenticated
    assert error.reason is AuthFailure.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("signing", "algorithm"),
    [(None, "none"), (SECRET, "HS512"), (b"k" * 32, "HS256")],
    ids=["alg-none", "hs512-with-the-secret", "hs256-with-another-secret"],
)
def test_unsigned_or_otherwise_signed_tokens_are_forgeries(
    authority: TokenAuthority, signing: bytes | None, algorithm: str
) -> None:
    payload = {"aud": "hodei-join", "sub": "w-1", "iat": 1_893_499_200, "exp": 1_893_499_260, "jti": "j"}
    token = jwt.encode(payload, signing, algorithm=algorithm)  # type: ignore[arg-type]

    error = refused(lambda: authority.verify_join_token(token, worker_id="w-1"))

    assert error.reason is AuthFailure.BAD_SIGNATURE


def test_ed25519_token_is_refused_by_an_hmac_authority() -> None:
    token = TokenAuthority(Ed25519PrivateKey.generate()).mint_join_token("w-1", ttl=60)

    assert refused(lambda: TokenAuthority(SECRET).verify_join_token(token, worker_id="w-1")).reason is (
        AuthFailure.BAD_SIGNATURE
    )


def test_correctly_signed_tokens_with_bad_claims_are_malformed() -> None:
    authority = TokenAuthority(SECRET, clock=FakeClock(epoch=T0).wall)
    good = {"aud": "hodei-join", "sub": "w-1", "iat": 1_893_499_200, "exp": 1_893_499_260, "jti": "j"}
    bad_payloads = [
        {k: v for k, v in good.items() if k != "exp"},
        {k: v for k, v in good.items() if k != "iat"},
        {k: v for k, v in good.items() if k != "jti"},
        {k: v for k, v in good.items() if k != "sub"},
        good | {"iat": "yesterday"},
        good | {"exp": True},
        good | {"sub": 7},
        good | {"pool": 3},
        good | {"labels": {"a": 1}},
        good | {"labels": ["a"]},
        good | {"single_use": "yes"},
    ]
    for payload in bad_payloads:
        token = jwt.encode(payload, SECRET, algorithm="HS256")
        error = refused(partial(authority.verify_join_token, token, worker_id="w-1"))
        assert (type(error), error.reason) == (Unauthenticated, AuthFailure.MALFORMED), payload


# --- kinds ---------------------------------------------------------------------------------------------------


def mint(authority: TokenAuthority, kind: TokenKind) -> str:
    if kind is TokenKind.JOIN:
        return authority.mint_join_token("w-1", ttl=60)
    if kind is TokenKind.WORKER:
        return authority.mint_worker_credential("w-1", 1)
    return authority.mint_operator_token("w-1", ttl=60)


def verify(authority: TokenAuthority, kind: TokenKind, token: str) -> object:
    if kind is TokenKind.JOIN:
        return authority.verify_join_token(token, worker_id="w-1")
    if kind is TokenKind.WORKER:
        return authority.verify_worker_credential(token, worker_id="w-1")
    return authority.verify_operator_token(token)


KIND_PAIRS = [(made, asked) for made in TokenKind for asked in TokenKind if made is not asked]


@pytest.mark.parametrize(("made", "asked"), KIND_PAIRS, ids=[f"{m.name}-as-{a.name}" for m, a in KIND_PAIRS])
def test_a_token_of_one_kind_is_never_accepted_as_another(
    authority: TokenAuthority, made: TokenKind, asked: TokenKind
) -> None:
    token = mint(authority, made)

    error = refused(lambda: verify(authority, asked, token))

    assert type(error) is Unauthenticated
    assert error.reason is AuthFailure.WRONG_KIND
    assert error.kind is asked
    assert str(error) == f"not a {asked.noun}"
    verify(authority, made, token)  # the token itself is good, as what it is


def test_a_signed_token_without_audience_is_no_kind_at_all() -> None:
    token = jwt.encode({"sub": "w-1", "iat": 1_893_499_200, "jti": "j"}, SECRET, algorithm="HS256")

    error = refused(
        lambda: TokenAuthority(SECRET, clock=FakeClock(epoch=T0).wall).verify_operator_token(token)
    )

    assert error.reason is AuthFailure.WRONG_KIND


# --- worker credentials --------------------------------------------------------------------------------------


def test_worker_credential_round_trips_and_does_not_expire_by_default(authority: TokenAuthority) -> None:
    token = authority.mint_worker_credential("w-1", incarnation=3)

    claims = authority.verify_worker_credential(token, worker_id="w-1", now=at(10 * 365 * 86400))

    assert (claims.worker_id, claims.incarnation, claims.issued_at, claims.expires_at) == ("w-1", 3, T0, None)
    assert authority.verify_worker_credential(token, worker_id="w-1") == claims  # not single use


def test_worker_credential_without_incarnation_says_none(authority: TokenAuthority) -> None:
    claims = authority.verify_worker_credential(authority.mint_worker_credential("w-1"), worker_id="w-1")

    assert claims.incarnation is None


def test_worker_credential_with_a_ttl_expires(authority: TokenAuthority) -> None:
    token = authority.mint_worker_credential("w-1", ttl=3600)

    assert authority.verify_worker_credential(token, worker_id="w-1").expires_at == at(3600)
    error = refused(lambda: authority.verify_worker_credential(token, worker_id="w-1", now=at(3600 + 60)))
    assert (type(error), error.reason) == (Unauthenticated, AuthFailure.EXPIRED)
    assert str(error) == "worker credential expired"


def test_worker_credential_for_another_worker_is_permission_denied(authority: TokenAuthority) -> None:
    token = authority.mint_worker_credential("w-1", 1)

    error = refused(lambda: authority.verify_worker_credential(token, worker_id="w-2"))

    assert type(error) is PermissionDenied
    assert error.reason is AuthFailure.WRONG_WORKER
    assert error.kind is TokenKind.WORKER
    assert str(error) == "worker credential is for another worker than 'w-2'"


def test_forged_or_missing_worker_credential_is_unauthenticated(authority: TokenAuthority) -> None:
    forged = TokenAuthority(b"f" * MIN_SECRET_BYTES).mint_worker_credential("w-1")

    assert (
        refused(lambda: authority.verify_worker_credential(None, worker_id="w-1")).reason
        is AuthFailure.MISSING
    )
    assert refused(lambda: authority.verify_worker_credential(forged, worker_id="w-1")).reason is (
        AuthFailure.BAD_SIGNATURE
    )


def test_worker_credential_with_a_non_integer_incarnation_is_malformed() -> None:
    payload = {"aud": "hodei-worker", "sub": "w-1", "iat": 1_893_499_200, "jti": "j", "inc": "3"}
    token = jwt.encode(payload, SECRET, algorithm="HS256")

    error = refused(
        lambda: TokenAuthority(SECRET, clock=FakeClock(epoch=T0).wall).verify_worker_credential(
            token, worker_id="w-1"
        )
    )

    assert error.reason is AuthFailure.MALFORMED


# --- operator tokens -----------------------------------------------------------------------------------------


def test_operator_token_round_trips_its_name_and_expires_after_thirty_days_by_default(
    authority: TokenAuthority,
) -> None:
    claims = authority.verify_operator_token(authority.mint_operator_token("alice"))

    assert (claims.name, claims.issued_at, claims.expires_at) == ("alice", T0, T0 + timedelta(days=30))
    assert DEFAULT_OPERATOR_TOKEN_TTL == 30 * 24 * 3600


def test_an_operator_token_minted_without_expiry_never_expires(authority: TokenAuthority) -> None:
    claims = authority.verify_operator_token(authority.mint_operator_token("alice", ttl=None))

    assert (claims.name, claims.expires_at) == ("alice", None)


def test_operator_token_with_a_ttl_expires(authority: TokenAuthority) -> None:
    token = authority.mint_operator_token("alice", ttl=60)

    error = refused(lambda: authority.verify_operator_token(token, now=at(3600)))

    assert (type(error), error.reason, error.kind) == (
        Unauthenticated,
        AuthFailure.EXPIRED,
        TokenKind.OPERATOR,
    )
    assert error.worker_id is None


def test_no_operator_token_is_unauthenticated(authority: TokenAuthority) -> None:
    error = refused(lambda: authority.verify_operator_token(None))

    assert (type(error), str(error)) == (Unauthenticated, "no operator token")


# --- keys ----------------------------------------------------------------------------------------------------


def test_an_ed25519_public_key_verifies_but_cannot_mint(clock: FakeClock) -> None:
    private = Ed25519PrivateKey.generate()
    minter, verifier = (
        TokenAuthority(private, clock=clock.wall),
        TokenAuthority(private.public_key(), clock=clock.wall),
    )
    token = minter.mint_join_token("w-1", ttl=60)

    assert verifier.verify_join_token(token, worker_id="w-1").worker_id == "w-1"
    assert (minter.can_mint, verifier.can_mint) == (True, False)
    with pytest.raises(ValueError, match="cannot mint"):
        verifier.mint_worker_credential("w-1")


def test_a_short_secret_or_another_kind_of_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes, got 31"):
        TokenAuthority(b"x" * 31)
    with pytest.raises(TypeError, match="bytes or an Ed25519 key, not"):
        TokenAuthority(ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leeway"):
        TokenAuthority(SECRET, leeway=-1)


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan")])
def test_minting_refuses_a_ttl_that_is_not_a_positive_number(authority: TokenAuthority, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        authority.mint_join_token("w-1", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        authority.mint_worker_credential("w-1", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        authority.mint_operator_token("alice", ttl=ttl)


def test_minting_refuses_an_invalid_worker_id_or_operator_name(authority: TokenAuthority) -> None:
    with pytest.raises(ValueError, match="worker_id: must not be empty"):
        authority.mint_join_token("", ttl=60)
    with pytest.raises(ValueError, match="worker_id: must start with a letter or digit"):
        authority.mint_worker_credential("-bad")
    with pytest.raises(ValueError, match="name: must start with a letter or digit"):
        authority.mint_operator_token("a b")


def test_load_key_reads_a_raw_secret_without_its_trailing_newline(tmp_path: Path) -> None:
    secret = generate_secret()
    path = tmp_path / "secret"
    path.write_bytes(secret + b"\n")

    assert load_key(path) == secret


def test_load_key_refuses_a_short_secret_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"hunter2-hunter2\n")

    with pytest.raises(ValueError, match="at least 32 bytes, got 15") as raised:
        load_key(path)
    assert str(path) in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_load_key_reads_ed25519_private_and_public_pem(tmp_path: Path) -> None:
    private = Ed25519PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "pub.pem").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    loaded_private, loaded_public = load_key(tmp_path / "key.pem"), load_key(tmp_path / "pub.pem")

    assert isinstance(loaded_private, Ed25519PrivateKey)
    assert isinstance(loaded_public, Ed25519PublicKey)
    token = TokenAuthority(loaded_private).mint_operator_token("alice")
    assert TokenAuthority(loaded_public).verify_operator_token(token).name == "alice"


def test_load_key_refuses_pem_that_is_not_an_ed25519_key(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"password"),
    )
    cases = {
        "ec.pem": (ec_key, "must be Ed25519"),
        "encrypted.pem": (encrypted, "without a password"),
        "broken.pem": (b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", "PEM key"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message) as raised:
            load_key(tmp_path / name)
        assert name in str(raised.value)


def test_generate_secret_makes_distinct_secrets_that_survive_a_file() -> None:
    first, second = generate_secret(), generate_secret()

    assert first != second
    assert len(first) >= MIN_SECRET_BYTES
    assert first.strip() == first
    assert (
        TokenAuthority(first).verify_operator_token(TokenAuthority(first).mint_operator_token("a")).name
        == "a"
    )


# --- the ledger ----------------------------------------------------------------------------------------------


def test_ledger_refuses_a_second_claim_and_forgets_an_id_after_its_expiry(clock: FakeClock) -> None:
    ledger = MemoryJtiLedger(clock=clock.wall)

    assert ledger.claim("a", at(10), "w-1", 1) is True
    assert ledger.claim("b", at(20), "w-2", 1) is True
    assert ledger.claim("a", at(10), "w-9", 1) is False
    clock.advance(15)
    assert len(ledger) == 1
    assert ledger.claim("a", at(30), "w-9", 1) is True
    assert ledger.claim("b", at(20), "w-9", 1) is False
    clock.advance(100)
    assert len(ledger) == 0


def test_ledger_lets_the_same_registration_claim_again_and_no_other(clock: FakeClock) -> None:
    ledger = MemoryJtiLedger(clock=clock.wall)

    assert ledger.claim("a", at(10), "w-1", 1) is True
    assert ledger.claim("a", at(10), "w-1", 1) is True  # a retry after a lost answer
    assert ledger.claim("a", at(10), "w-2", 1) is False
    assert ledger.claim("a", at(10), "w-1", 2) is False  # the worker restarted: a new registration
    assert len(ledger) == 1


def test_authority_remembers_a_spent_token_until_its_expiry_plus_the_leeway(
    key: TokenKey, clock: FakeClock
) -> None:
    authority = TokenAuthority(key, clock=clock.wall, leeway=5)
    authority.verify_join_token(authority.mint_join_token("w-1", ttl=60), worker_id="w-1")
    assert isinstance(authority.ledger, MemoryJtiLedger)

    clock.advance(65)
    assert len(authority.ledger) == 1
    clock.advance(1)
    assert len(authority.ledger) == 0


# --- errors --------------------------------------------------------------------------------------------------


def test_errors_are_hodei_errors_with_the_code_to_answer() -> None:
    assert issubclass(AuthError, HodeiError)
    assert Unauthenticated.code is ErrorCode.UNAUTHENTICATED
    assert PermissionDenied.code is ErrorCode.PERMISSION_DENIED
    error = PermissionDenied(AuthFailure.WRONG_POOL, kind=TokenKind.JOIN)
    assert repr(error) == "PermissionDenied(reason=wrong_pool, message='join token is bound to another pool')"


@pytest.mark.parametrize("reason", list(AuthFailure))
def test_a_refusal_is_permission_denied_only_for_a_credential_bound_to_someone_else_or_another_action(
    reason: AuthFailure,
) -> None:
    error = AuthError.refusal(reason, kind=TokenKind.WORKER, worker_id="w-9")

    bound_elsewhere = reason in (
        AuthFailure.WRONG_WORKER,
        AuthFailure.WRONG_POOL,
        AuthFailure.WRONG_LABELS,
        AuthFailure.WRONG_ACTION,
    )
    assert type(error) is (PermissionDenied if bound_elsewhere else Unauthenticated)
    assert (error.reason, error.kind, error.worker_id) == (reason, TokenKind.WORKER, "w-9")
    assert "worker credential" in error.message


def test_no_refusal_ever_shows_the_token(key: TokenKey, clock: FakeClock) -> None:
    authority = TokenAuthority(key, clock=clock.wall)
    join = authority.mint_join_token("w-1", ttl=60, pool="p", labels={"a": "b"})
    credential = authority.mint_worker_credential("w-1")
    operator = authority.mint_operator_token("alice")
    forged = TokenAuthority(b"f" * MIN_SECRET_BYTES).mint_join_token("w-1", ttl=60)
    attempts: list[tuple[str, Callable[[], object]]] = [
        (join, lambda: authority.verify_join_token(join, worker_id="w-2")),
        (join, lambda: authority.verify_join_token(join, worker_id="w-1", pool="q", labels={"a": "b"})),
        (join, lambda: authority.verify_join_token(join, worker_id="w-1", pool="p", labels={})),
        (join, lambda: authority.verify_join_token(join, worker_id="w-1", now=at(3600))),
        (join, lambda: authority.verify_join_token(join, worker_id="w-1", now=at(-3600))),
        (join, lambda: authority.verify_join_token(join[:-3], worker_id="w-1")),
        (join, lambda: authority.verify_join_token(join + "." + join, worker_id="w-1")),
        (join, lambda: authority.verify_operator_token(join)),
        (forged, lambda: authority.verify_join_token(forged, worker_id="w-1")),
        (credential, lambda: authority.verify_worker_credential(credential, worker_id="w-2")),
        (credential, lambda: authority.verify_join_token(credential, worker_id="w-1")),
        (operator, lambda: authority.verify_worker_credential(operator, worker_id="alice")),
    ]
    authority.verify_join_token(join, worker_id="w-1", pool="p", labels={"a": "b"})
    attempts.append(
        (
            join,
            lambda: authority.verify_join_token(
                join, worker_id="w-1", pool="p", labels={"a": "b"}, incarnation=2
            ),
        )
    )

    for token, attempt in attempts:
        error = refused(attempt)
        shown = "".join(traceback.format_exception(error)) + repr(error)
        secret_parts = [token, *token.split(".")[1:]]  # the header alone is the same in every token
        assert not [part for part in secret_parts if part in shown], shown
