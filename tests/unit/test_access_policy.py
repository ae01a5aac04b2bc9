"""The scheduler's rules of who may call what (AccessPolicy), and how a credential travels in metadata."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hodei.security import (
    AccessPolicy,
    AuthError,
    AuthFailure,
    PermissionDenied,
    TokenAuthority,
    TokenKind,
    Unauthenticated,
    authorization_metadata,
    bearer_token,
)
from hodei.security.access import JOIN_ACTIONS, WORKER_ACTIONS

SECRET = b"a" * 48
OPERATOR_ONLY = [
    "RegisterWorkers",
    "GetWorker",
    "ListWorkers",
    "DrainWorker",
    "ShutdownWorker",
    "WatchWorkers",
    "ReportOrphanRemoved",
]


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority(SECRET)


@pytest.fixture
def policy(authority: TokenAuthority) -> AccessPolicy:
    return AccessPolicy(authority)


def refusal(call: object) -> AuthError:
    assert callable(call)
    with pytest.raises(AuthError) as raised:
        call()
    return raised.value


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer abc.def"),), "abc.def"),
        ((("authorization", "bearer   abc  "),), "abc"),
        ((("authorization", b"BEARER abc"),), "abc"),
        ((("authorization", "Basic abc"),), "Basic abc"),
        ((("x-other", "1"), ("authorization", "Bearer first"), ("authorization", "Bearer second")), "first"),
        ((("x-other", "1"),), None),
        ((), None),
        (None, None),
    ],
)
def test_bearer_token_reads_the_first_authorization_entry(metadata: object, token: str | None) -> None:
    assert bearer_token(metadata) == token  # type: ignore[arg-type]


def test_authorization_metadata_presents_a_bearer_token() -> None:
    assert authorization_metadata("t0k") == (("authorization", "Bearer t0k"),)
    assert bearer_token(authorization_metadata("t0k")) == "t0k"


@pytest.mark.parametrize("action", [*sorted(WORKER_ACTIONS), *OPERATOR_ONLY])
def test_an_operator_may_do_anything_and_is_handed_no_credential(
    policy: AccessPolicy, authority: TokenAuthority, action: str
) -> None:
    claims = policy.authenticate(authority.mint_operator_token("ops"))

    grant = policy.authorize(claims, action, worker_id="w-1")

    assert (grant.caller, grant.kind, grant.credential) == ("ops", TokenKind.OPERATOR, "")


@pytest.mark.parametrize("action", sorted(JOIN_ACTIONS))
def test_a_join_token_registers_its_worker_once_and_hands_a_credential(
    policy: AccessPolicy, authority: TokenAuthority, action: str
) -> None:
    claims = policy.authenticate(authority.mint_join_token("w-1", ttl=60))

    grant = policy.authorize(claims, action, worker_id="w-1", pool="default", labels={}, incarnation=1)
    retried = policy.authorize(claims, action, worker_id="w-1", pool="default", labels={}, incarnation=1)
    replay = refusal(lambda: policy.authorize(claims, action, worker_id="w-1", incarnation=2))

    assert (grant.caller, grant.kind) == ("w-1", TokenKind.JOIN)
    assert authority.verify_worker_credential(grant.credential, worker_id="w-1").expires_at is None
    assert grant.credential not in repr(grant)
    assert (retried.caller, retried.kind) == ("w-1", TokenKind.JOIN)  # its answer was lost: no replay
    assert (type(replay), replay.reason) == (Unauthenticated, AuthFailure.REPLAYED)


@pytest.mark.parametrize("action", ["UnregisterWorker", *OPERATOR_ONLY])
def test_a_join_token_allows_nothing_else_and_is_not_spent_by_a_refusal(
    policy: AccessPolicy, authority: TokenAuthority, action: str
) -> None:
    claims = policy.authenticate(authority.mint_join_token("w-1", ttl=60))

    error = refusal(lambda: policy.authorize(claims, action, worker_id="w-1"))

    assert (type(error), error.reason, error.action) == (PermissionDenied, AuthFailure.WRONG_ACTION, action)
    assert error.message == f"a join token does not allow {action}"
    assert policy.authorize(claims, "Connect", worker_id="w-1").credential


def test_a_join_token_for_another_worker_or_pool_is_denied_and_not_spent(
    policy: AccessPolicy, authority: TokenAuthority
) -> None:
    claims = policy.authenticate(authority.mint_join_token("w-1", ttl=60, pool="gpu"))

    other_worker = refusal(lambda: policy.authorize(claims, "Connect", worker_id="w-2", pool="gpu"))
    other_pool = refusal(lambda: policy.authorize(claims, "Connect", worker_id="w-1", pool="cpu"))

    assert (type(other_worker), other_worker.reason) == (PermissionDenied, AuthFailure.WRONG_WORKER)
    assert (type(other_pool), other_pool.reason) == (PermissionDenied, AuthFailure.WRONG_POOL)
    assert policy.authorize(claims, "Connect", worker_id="w-1", pool="gpu").credential


@pytest.mark.parametrize("action", sorted(WORKER_ACTIONS))
def test_a_worker_credential_acts_on_its_own_worker_and_keeps_itself(
    policy: AccessPolicy, authority: TokenAuthority, action: str
) -> None:
    claims = policy.authenticate(authority.mint_worker_credential("w-1"))

    grant = policy.authorize(claims, action, worker_id="w-1")
    other = refusal(lambda: policy.authorize(claims, action, worker_id="w-2"))

    assert (grant.caller, grant.kind, grant.credential) == ("w-1", TokenKind.WORKER, "")
    assert (type(other), other.reason) == (PermissionDenied, AuthFailure.WRONG_WORKER)


@pytest.mark.parametrize("action", OPERATOR_ONLY)
def test_a_worker_credential_may_not_do_what_operators_do(
    policy: AccessPolicy, authority: TokenAuthority, action: str
) -> None:
    claims = policy.authenticate(authority.mint_worker_credential("w-1"))

    error = refusal(lambda: policy.authorize(claims, action, worker_id="w-1"))

    assert (type(error), error.reason) == (PermissionDenied, AuthFailure.WRONG_ACTION)


def test_a_worker_action_without_a_worker_id_is_denied(
    policy: AccessPolicy, authority: TokenAuthority
) -> None:
    claims = policy.authenticate(authority.mint_worker_credential("w-1"))

    error = refusal(lambda: policy.authorize(claims, "UnregisterWorker"))

    assert (type(error), error.reason) == (PermissionDenied, AuthFailure.WRONG_ACTION)


def test_a_policy_with_a_credential_ttl_renews_the_credential_at_each_registration(
    authority: TokenAuthority,
) -> None:
    policy = AccessPolicy(authority, worker_credential_ttl=120)
    claims = policy.authenticate(authority.mint_worker_credential("w-1", ttl=60))

    renewed = policy.authorize(claims, "Connect", worker_id="w-1").credential
    unregistering = policy.authorize(claims, "UnregisterWorker", worker_id="w-1").credential

    fresh = authority.verify_worker_credential(renewed, worker_id="w-1")
    assert fresh.expires_at is not None and (fresh.expires_at - fresh.issued_at).total_seconds() == 120
    assert unregistering == ""


@pytest.mark.parametrize("token", [None, "", "garbage"])
def test_authenticate_refuses_no_token_or_garbage(policy: AccessPolicy, token: str | None) -> None:
    assert type(refusal(lambda: policy.authenticate(token))) is Unauthenticated


def test_a_policy_needs_a_key_that_mints_and_a_positive_ttl() -> None:
    public = TokenAuthority(Ed25519PrivateKey.generate().public_key())

    with pytest.raises(ValueError, match="must be able to mint"):
        AccessPolicy(public)
    with pytest.raises(ValueError, match="worker_credential_ttl must be > 0"):
        AccessPolicy(TokenAuthority(SECRET), worker_credential_ttl=0)
