"""The command line with auth and TLS: ``hodei token``, ``hodei pki init``, ``hodei scheduler serve --auth-key
--tls-*``, the workers commands' ``--token``/``--tls-*``, and an agent refused for its token (exit 2).

Every process a test starts is ended by the test (by its PID), and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from hodei.security import TestPki, TokenAuthority, load_key, write_test_pki
from tests.helpers import free_port
from tests.integration.helpers import CLI_ENV, HODEI, end, run_hodei


@dataclass(frozen=True)
class Secured:
    target: str
    key: Path
    pki: TestPki
    metrics_url: str
    operator: str


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "token.key"
    path.write_bytes(b"c" * 48)
    return path


@contextlib.asynccontextmanager
async def secured_scheduler(tmp_path: Path, key: Path, *extra: str) -> AsyncIterator[Secured]:
    """``hodei scheduler serve`` with auth, TLS and HTTPS metrics on free loopback ports, once it says where it
    listens; killed at exit."""
    pki = write_test_pki(tmp_path / "pki")
    target = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        HODEI,
        "scheduler",
        "serve",
        "--listen",
        target,
        "--store",
        "memory",
        "--auth-key",
        str(key),
        "--tls-cert",
        str(pki.server_cert_file),
        "--tls-key",
        str(pki.server_key_file),
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-tls-cert",
        str(pki.server_cert_file),
        "--metrics-tls-key",
        str(pki.server_key_file),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=CLI_ENV,
    )
    try:
        assert process.stdout is not None
        lines = [(await asyncio.wait_for(process.stdout.readline(), 20)).decode() for _ in range(2)]
        assert lines[0].startswith(
            f"hodei scheduler listening on {target} (store: memory; auth: on, tls: on"
        ), lines
        metrics_url = lines[1].removeprefix("metrics on ").strip()
        operator = TokenAuthority(load_key(key)).mint_operator_token("tests")
        yield Secured(target, key, pki, metrics_url, operator)
    finally:
        await end(process)


# --- hodei token, hodei pki --------------------------------------------------------------------------------


async def test_token_secret_writes_a_private_key_file_and_never_overwrites_one(tmp_path: Path) -> None:
    path = tmp_path / "secret"

    made = await run_hodei("token", "secret", str(path))
    again = await run_hodei("token", "secret", str(path))

    assert made.returncode == 0, made
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_bytes().strip()) >= 32
    assert path.read_bytes().strip().decode() not in made.stdout + made.stderr
    assert again.returncode == 2
    assert "exists" in again.stderr


async def test_token_commands_print_tokens_of_each_kind_that_the_key_verifies(
    tmp_path: Path, key: Path
) -> None:
    authority = TokenAuthority(load_key(key))

    operator = await run_hodei("token", "operator", "alice", "--key", str(key), "--ttl", "60")
    join = await run_hodei(
        "token", "join", "w-1", "--key", str(key), "--pool", "gpu", "--label", "os=linux", "--ttl", "60"
    )
    worker = await run_hodei("token", "worker", "w-1", "--key", str(key))
    bound = await run_hodei(
        "token", "worker", "w-1", "--key", str(key), "--pool", "gpu", "--label", "os=linux"
    )

    assert authority.verify_operator_token(operator.stdout.strip()).name == "alice"
    claims = authority.verify_join_token(
        join.stdout.strip(), worker_id="w-1", pool="gpu", labels={"os": "linux"}
    )
    assert claims.single_use
    assert authority.verify_worker_credential(worker.stdout.strip(), worker_id="w-1").expires_at is None
    binding = authority.verify_worker_credential(bound.stdout.strip(), worker_id="w-1")
    assert (binding.pool, binding.labels) == ("gpu", {"os": "linux"})


async def test_an_operator_token_expires_after_thirty_days_by_default_and_the_command_says_when(
    key: Path,
) -> None:
    authority = TokenAuthority(load_key(key))

    default = await run_hodei("token", "operator", "alice", "--key", str(key))
    hour = await run_hodei("token", "operator", "alice", "--key", str(key), "--ttl", "3600")
    forever = await run_hodei("token", "operator", "alice", "--key", str(key), "--ttl", "0")

    claims = authority.verify_operator_token(default.stdout.strip())
    assert claims.expires_at is not None
    assert claims.expires_at - claims.issued_at == timedelta(days=30)
    assert (
        default.stderr
        == f"the operator token expires at {claims.expires_at:%Y-%m-%dT%H:%M:%S}Z (in 30 days)\n"
    )
    hourly = authority.verify_operator_token(hour.stdout.strip())
    assert hourly.expires_at is not None
    assert (
        hour.stderr == f"the operator token expires at {hourly.expires_at:%Y-%m-%dT%H:%M:%S}Z (in 1 hour)\n"
    )
    assert authority.verify_operator_token(forever.stdout.strip()).expires_at is None
    assert forever.stderr == "the operator token never expires\n"
    assert [default.returncode, hour.returncode, forever.returncode] == [0, 0, 0]


async def test_token_commands_refuse_a_public_key_and_a_missing_key_file(tmp_path: Path, key: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = tmp_path / "public.pem"
    public.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    from_public = await run_hodei("token", "operator", "alice", "--key", str(public))
    from_nothing = await run_hodei("token", "operator", "alice", "--key", str(tmp_path / "nothing"))
    bad_id = await run_hodei("token", "join", "not a worker id!", "--key", str(key))

    assert (from_public.returncode, from_nothing.returncode, bad_id.returncode) == (2, 2, 2)
    assert "cannot make them" in from_public.stderr
    assert "nothing" in from_nothing.stderr
    assert bad_id.stderr == (
        "hodei token join: error: Invalid value: worker_id: must start with a letter or digit and contain only "
        "letters, digits, '.', '_' and '-' (see 'hodei token join --help')\n"
    )


async def test_pki_init_writes_a_ca_and_certificates_for_localhost(tmp_path: Path) -> None:
    made = await run_hodei("pki", "init", str(tmp_path / "pki"))

    assert made.returncode == 0, made
    names = sorted(p.name for p in (tmp_path / "pki").iterdir())
    assert names == ["ca.pem", "client-key.pem", "client.pem", "server-key.pem", "server.pem"]
    assert str(tmp_path / "pki" / "ca.pem") in made.stdout
    assert (tmp_path / "pki" / "server-key.pem").stat().st_mode & 0o777 == 0o600


async def test_pki_init_keeps_an_existing_ca_unless_forced(tmp_path: Path) -> None:
    await run_hodei("pki", "init", str(tmp_path / "pki"))
    ca = (tmp_path / "pki" / "ca.pem").read_bytes()

    again = await run_hodei("pki", "init", str(tmp_path / "pki"))
    kept = (tmp_path / "pki" / "ca.pem").read_bytes()
    forced = await run_hodei("pki", "init", str(tmp_path / "pki"), "--force")

    assert (again.returncode, again.stdout) == (2, "")
    assert again.stderr == (
        f"hodei pki init: error: Invalid value for DIRECTORY: {tmp_path / 'pki' / 'ca.pem'} exists (--force "
        "replaces it) (see 'hodei pki init --help')\n"
    )
    assert kept == ca
    assert forced.returncode == 0, forced
    assert (tmp_path / "pki" / "ca.pem").read_bytes() != ca


# --- hodei scheduler serve with auth and TLS -----------------------------------------------------------------


async def test_workers_list_needs_the_operator_token_and_the_ca(tmp_path: Path, key: Path) -> None:
    async with secured_scheduler(tmp_path, key) as served:
        ca = str(served.pki.ca_file)
        token_file = tmp_path / "operator.token"
        token_file.write_text(served.operator + "\n")

        listed = await run_hodei(
            "workers", "list", "-s", served.target, "--token", served.operator, "--tls-ca", ca
        )
        from_file = await run_hodei(
            "workers", "list", "-s", served.target, "--token-file", str(token_file), "--tls-ca", ca
        )
        no_token = await run_hodei("workers", "list", "-s", served.target, "--tls-ca", ca)
        no_tls = await run_hodei(
            "workers", "list", "-s", served.target, "--token", served.operator, timeout=20
        )

    assert (listed.returncode, from_file.returncode) == (0, 0), (listed, from_file)
    assert "0 worker(s)" in listed.stdout
    assert no_token.returncode == 1
    assert "error: UNAUTHENTICATED: no credential" in no_token.stderr
    assert no_tls.returncode == 1
    assert "UNAVAILABLE" in no_tls.stderr
    assert served.operator not in no_token.stderr + no_tls.stderr + listed.stdout


async def test_workers_commands_refuse_unreadable_tls_files_and_two_tokens(tmp_path: Path, key: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("nothing here")

    bad_ca = await run_hodei("workers", "list", "--tls-ca", str(bogus))
    pki = write_test_pki(tmp_path / "pki")
    half = await run_hodei(
        "workers", "list", "--tls-ca", str(pki.ca_file), "--tls-cert", str(pki.client_cert_file)
    )
    both = await run_hodei("workers", "list", "--token", "x", "--token-file", str(bogus))

    assert (bad_ca.returncode, half.returncode, both.returncode) == (2, 2, 2)
    # One line each, whatever the length of the path in it: no box, no wrapping.
    tls_options = "hodei workers list: error: Invalid value for --tls-ca/--tls-cert/--tls-key"
    hint = "(see 'hodei workers list --help')\n"
    assert bad_ca.stderr == f"{tls_options}: ca_file: {bogus} holds no PEM certificate {hint}"
    assert (
        both.stderr
        == f"hodei workers list: error: Invalid value for --token: give --token or --token-file, not both {hint}"
    )
    assert (
        half.stderr
        == f"{tls_options}: key_file: a client certificate needs both cert_file and key_file {hint}"
    )


async def test_scheduler_serve_names_a_tls_file_that_is_wrong_and_exits_2(tmp_path: Path, key: Path) -> None:
    pki = write_test_pki(tmp_path / "pki")

    served = await run_hodei(
        "scheduler", "serve", "--store", "memory", "--listen", f"127.0.0.1:{free_port()}",
        "--tls-cert", str(pki.client_cert_file), "--tls-key", str(pki.server_key_file),
    )  # fmt: skip
    no_key = await run_hodei(
        "scheduler", "serve", "--store", "memory", "--auth-key", str(tmp_path / "missing.key")
    )

    assert served.returncode == 2
    assert f"{pki.server_key_file} is not the private key of the certificate" in served.stderr
    assert no_key.returncode == 2
    assert "missing.key" in no_key.stderr


async def test_metrics_are_served_over_https_to_a_client_that_trusts_the_ca(
    tmp_path: Path, key: Path
) -> None:
    async with secured_scheduler(tmp_path, key) as served:
        trusting = ssl.create_default_context(cafile=str(served.pki.ca_file))
        untrusting = ssl.create_default_context(cafile=str(write_test_pki(tmp_path / "other").ca_file))

        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(served.metrics_url, context=trusting, timeout=10).read()
        )
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(
                lambda: urllib.request.urlopen(served.metrics_url, context=untrusting, timeout=10)
            )

    assert served.metrics_url.startswith("https://127.0.0.1:")
    assert b"hodei_workers" in body


# --- hodei agent refused for its token ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code"),
    [("garbage", "UNAUTHENTICATED"), ("none", "UNAUTHENTICATED"), ("another worker's", "PERMISSION_DENIED")],
)
async def test_an_agent_with_a_bad_token_exits_2_with_one_clear_line_and_no_token(
    tmp_path: Path, key: Path, case: str, code: str
) -> None:
    async with secured_scheduler(tmp_path, key) as served:
        token = {
            "garbage": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3LTEifQ.garbage-signature",
            "none": "",
            "another worker's": TokenAuthority(load_key(key)).mint_join_token("w-2", ttl=60),
        }[case]
        agent = await run_hodei(
            "agent", "-s", served.target, "--worker-id", "w-1", "--tls-ca", str(served.pki.ca_file),
            *(("--join-token", token) if token else ()), "--log-format", "console",
        )  # fmt: skip

    assert agent.returncode == 2, agent
    [message] = [line for line in agent.stderr.splitlines() if line.startswith("hodei agent:")]
    assert message.startswith(f"hodei agent: the scheduler refused worker 'w-1': {code}: ")
    assert message.endswith("(check the agent's token: --join-token, HODEI_JOIN_TOKEN or --token-file)")
    if token:
        assert token not in agent.stdout + agent.stderr
        assert token.split(".")[2] not in agent.stdout + agent.stderr
