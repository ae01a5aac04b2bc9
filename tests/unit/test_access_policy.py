"""The scheduler's rules of who may call what (AccessPolicy), how a credential travels in metadata, and what the
servicer asks before each call (CallAuthorizer: the rules, the registry's refusal first, a join token spent durably)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hodei.domain import DynamicWorker, WorkerRecord
from hodei.errors import InvalidWorkerData
from hodei.security import (
    DEFAULT_WORKER_CREDENTIAL_TTL,
    AccessPolicy,
    AuthError,
    AuthFailure,
    JoinClaims,
    PermissionDenied,
    SchedulerSecurity,
    TokenAuthority,
    TokenKind,
    Unauthenticated,
    authorization_metadata,
    bearer_token,
)
from hodei.security._access import JOIN_ACTIONS, WORKER_ACTIONS, CallAuthorizer
from hodei.testing import FakeClock
from tests.helpers import make_worker

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
    credential = authority.verify_worker_credential(grant.credential, worker_id="w-1")
    assert credential.expires_at == credential.issued_at + timedelta(days=7)  # expires by default
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
    authority: TokenAuthority, action: str
) -> None:
    policy = AccessPolicy(authority, worker_credential_ttl=None)  # credentials that never expire
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


# --- a credential carries its join token's binding, expires, and is renewed --------------------------------


def bound_credential(policy: AccessPolicy, authority: TokenAuthority) -> str:
    """The credential a worker got for joining with a token bound to pool ``untrusted`` and ``{"os": "linux"}``."""
    join = policy.authenticate(
        authority.mint_join_token("w-1", ttl=60, pool="untrusted", labels={"os": "linux"})
    )
    grant = policy.authorize(join, "Connect", worker_id="w-1", pool="untrusted", labels={"os": "linux"})
    return grant.credential


@pytest.mark.parametrize("action", sorted(JOIN_ACTIONS))
@pytest.mark.parametrize(
    ("pool", "labels", "reason"),
    [
        ("release", {"os": "linux"}, AuthFailure.WRONG_POOL),
        ("untrusted", {"os": "linux", "trusted": "yes"}, AuthFailure.WRONG_LABELS),
        ("untrusted", {"os": "windows"}, AuthFailure.WRONG_LABELS),
        ("untrusted", {}, AuthFailure.WRONG_LABELS),
    ],
)
def test_a_credential_from_a_bound_join_token_registers_only_within_the_binding(
    policy: AccessPolicy,
    authority: TokenAuthority,
    action: str,
    pool: str,
    labels: dict[str, str],
    reason: AuthFailure,
) -> None:
    credential = bound_credential(policy, authority)
    claims = policy.authenticate(credential)

    error = refusal(lambda: policy.authorize(claims, action, worker_id="w-1", pool=pool, labels=labels))
    allowed = policy.authorize(claims, action, worker_id="w-1", pool="untrusted", labels={"os": "linux"})

    assert (type(error), error.reason, error.kind) == (PermissionDenied, reason, TokenKind.WORKER)
    carried = authority.verify_worker_credential(credential, worker_id="w-1")
    assert (carried.pool, carried.labels) == ("untrusted", {"os": "linux"})
    renewed = authority.verify_worker_credential(allowed.credential, worker_id="w-1")
    assert (renewed.pool, renewed.labels) == ("untrusted", {"os": "linux"})  # the renewal keeps the binding


def test_worker_credentials_expire_after_a_week_by_default_and_each_hello_renews_them() -> None:
    clock = FakeClock(epoch=datetime(2030, 1, 1, tzinfo=UTC))
    authority = TokenAuthority(SECRET, clock=clock.wall)
    policy = AccessPolicy(authority)
    first = policy.authorize(
        policy.authenticate(authority.mint_join_token("w-1", ttl=60)), "Connect", worker_id="w-1"
    ).credential

    clock.advance(
        timedelta(days=6).total_seconds()
    )  # a day before it would expire, the agent says hello again
    renewed = policy.authorize(policy.authenticate(first), "Connect", worker_id="w-1").credential
    clock.advance(timedelta(days=6).total_seconds())  # the first has expired by now; the renewed one has not
    expired = refusal(lambda: policy.authenticate(first))
    again = policy.authorize(policy.authenticate(renewed), "Connect", worker_id="w-1").credential

    assert policy.worker_credential_ttl == DEFAULT_WORKER_CREDENTIAL_TTL == 7 * 24 * 3600
    assert (type(expired), expired.reason) == (Unauthenticated, AuthFailure.EXPIRED)
    claims = authority.verify_worker_credential(again, worker_id="w-1")
    assert claims.expires_at == datetime(2030, 1, 13, tzinfo=UTC) + timedelta(days=7)


def test_unregistering_with_a_credential_hands_no_new_one(
    policy: AccessPolicy, authority: TokenAuthority
) -> None:
    claims = policy.authenticate(authority.mint_worker_credential("w-1", ttl=60))

    grant = policy.authorize(claims, "UnregisterWorker", worker_id="w-1")

    assert (grant.caller, grant.kind, grant.credential) == ("w-1", TokenKind.WORKER, "")


def test_a_scheduler_configured_from_files_expires_worker_credentials_after_a_week(tmp_path: Path) -> None:
    key = tmp_path / "token.key"
    key.write_bytes(SECRET)

    default = SchedulerSecurity.from_files(auth_key=key)
    never = SchedulerSecurity.from_files(auth_key=key, worker_credential_ttl=None)

    assert default.access is not None and default.access.worker_credential_ttl == 7 * 24 * 3600
    assert never.access is not None and never.access.worker_credential_ttl is None


# --- CallAuthorizer: what the servicer asks, with the caller's claims and the request's worker -------------


class SpentTokensStore:
    """The registry store's memory of spent join tokens (a collaborator of the authorizer): it records each call,
    and says a token is spent by the first registration (worker id and incarnation) that spends it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self._spent: dict[str, tuple[str, int]] = {}

    async def spend(self, token_id: str, expires_at: datetime, worker_id: str, incarnation: int) -> bool:
        self.calls.append((token_id, worker_id, incarnation))
        return self._spent.setdefault(token_id, (worker_id, incarnation)) == (worker_id, incarnation)


class Vetting:
    """The registry's check of a worker (a collaborator): records whom it was asked about, refuses ``refused``."""

    def __init__(self, refused: str = "") -> None:
        self.asked: list[str] = []
        self._refused = refused

    def __call__(self, worker: WorkerRecord | DynamicWorker) -> None:
        self.asked.append(worker.worker_id)
        if worker.worker_id == self._refused:
            raise InvalidWorkerData(f"worker {worker.worker_id!r} is invalid", worker_id=worker.worker_id)


def joining(worker_id: str, incarnation: int = 1) -> DynamicWorker:
    return replace(make_worker(worker_id), incarnation=incarnation)


async def test_an_operator_is_allowed_without_the_registry_being_asked_or_anything_spent(
    policy: AccessPolicy, authority: TokenAuthority
) -> None:
    spent, vet = SpentTokensStore(), Vetting()
    authorizer = CallAuthorizer(policy, spent=spent, vet=vet)
    claims = policy.authenticate(authority.mint_operator_token("ops"))

    grant = await authorizer.allow(claims, "RegisterWorker", worker=joining("w-1"))

    assert (grant.caller, grant.kind, grant.credential) == ("ops", TokenKind.OPERATOR, "")
    assert (vet.asked, spent.calls) == ([], [])


async def test_a_call_nobody_authenticated_is_refused_as_missing_a_credential(policy: AccessPolicy) -> None:
    vet = Vetting()
    authorizer = CallAuthorizer(policy, vet=vet)

    with pytest.raises(AuthError) as raised:
        await authorizer.allow(None, "GetWorker", worker_id="w-1")

    assert (type(raised.value), raised.value.reason) == (Unauthenticated, AuthFailure.MISSING)
    assert vet.asked == []


async def test_a_join_token_is_spent_in_the_store_once_per_registration_and_a_replay_is_refused(
    policy: AccessPolicy, authority: TokenAuthority
) -> None:
    spent, vet = SpentTokensStore(), Vetting()
    authorizer = CallAuthorizer(policy, spent=spent, vet=vet)
    claims = policy.authenticate(authority.mint_join_token("w-1", ttl=60))
    assert isinstance(claims, JoinClaims)

    grant = await authorizer.allow(claims, "Connect", worker=joining("w-1"))
    retried = await authorizer.allow(claims, "Connect", worker=joining("w-1"))  # its answer was lost
    # Another process's ledger let it through (another replica, a restart): the store remembers.
    elsewhere = CallAuthorizer(AccessPolicy(TokenAuthority(SECRET)), spent=spent, vet=vet)
    with pytest.raises(AuthError) as replayed:
        await elsewhere.allow(claims, "Connect", worker=joining("w-1", incarnation=2))

    assert (grant.caller, grant.kind) == ("w-1", TokenKind.JOIN)
    authority.verify_worker_credential(grant.credential, worker_id="w-1")
    assert (retried.caller, retried.kind) == ("w-1", TokenKind.JOIN)
    assert (type(replayed.value), replayed.value.reason) == (Unauthenticated, AuthFailure.REPLAYED)
    assert spent.calls == [
        (claims.token_id, "w-1", 1),
        (claims.token_id, "w-1", 1),
        (claims.token_id, "w-1", 2),
    ]
    assert vet.asked == ["w-1", "w-1", "w-1"]


async def test_a_worker_the_registry_refuses_is_refused_before_its_join_token_is_spent(
    policy: AccessPolicy, authority: TokenAuthority
) -> None:
    spent = SpentTokensStore()
    authorizer = CallAuthorizer(policy, spent=spent, vet=Vetting(refused="w-1"))
    claims = policy.authenticate(authority.mint_join_token("w-1", ttl=60))

    with pytest.raises(InvalidWorkerData, match="worker 'w-1' is invalid"):
        await authorizer.allow(claims, "RegisterWorker", worker=joining("w-1"))
    grant = await CallAuthorizer(policy, spent=spent).allow(
        claims, "RegisterWorker", worker=joining("w-1", 2)
    )

    assert spent.calls == [(claims.token_id, "w-1", 2)]  # the refused registration spent nothing
    assert (grant.caller, grant.kind) == ("w-1", TokenKind.JOIN)


async def test_a_worker_credential_is_allowed_for_its_own_worker_and_spends_nothing(
    policy: AccessPolicy, authority: TokenAuthority
) -> None:
    spent, vet = SpentTokensStore(), Vetting()
    authorizer = CallAuthorizer(policy, spent=spent, vet=vet)
    claims = policy.authenticate(authority.mint_worker_credential("w-1"))

    grant = await authorizer.allow(claims, "UnregisterWorker", worker_id="w-1")
    with pytest.raises(AuthError) as other:
        await authorizer.allow(claims, "UnregisterWorker", worker_id="w-2")

    assert (grant.caller, grant.kind, grant.credential) == ("w-1", TokenKind.WORKER, "")
    assert (type(other.value), other.value.reason) == (PermissionDenied, AuthFailure.WRONG_WORKER)
    assert (vet.asked, spent.calls) == ([], [])
