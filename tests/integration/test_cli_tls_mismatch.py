"""TLS mismatches say so: a client that speaks plaintext to a TLS scheduler, TLS to a plaintext one, or comes
without a certificate to one that requires it, is told which option to add or drop; the scheduler logs one
structured, rate-limited line per cause, and none of gRPC core's own lines raw.

Every process a test starts is ended by the test (by its PID), and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from hodei.security import TestPki, write_test_pki
from tests.helpers import free_port
from tests.integration.helpers import CLI_ENV, HODEI, end, run_hodei


@dataclass(frozen=True)
class Served:
    target: str
    pki: TestPki
    log: Path


@contextlib.asynccontextmanager
async def tls_scheduler(tmp_path: Path, *, mutual: bool) -> AsyncIterator[Served]:
    """``hodei scheduler serve`` over TLS (mutual TLS if ``mutual``), its stderr in a file; killed at exit."""
    pki = write_test_pki(tmp_path / "pki")
    target = f"127.0.0.1:{free_port()}"
    log = tmp_path / "scheduler.log"
    client_ca = ("--tls-client-ca", str(pki.ca_file)) if mutual else ()
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            HODEI, "scheduler", "serve", "--listen", target, "--store", "memory",
            "--tls-cert", str(pki.server_cert_file), "--tls-key", str(pki.server_key_file), *client_ca,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=CLI_ENV,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith(f"hodei scheduler listening on {target}"), line
        yield Served(target, pki, log)
    finally:
        await end(process)


def events(log: Path) -> list[dict[str, object]]:
    lines = log.read_text().splitlines()
    assert all(line.startswith("{") for line in lines), lines  # nothing raw from gRPC core
    return [json.loads(line) for line in lines]


async def test_a_plaintext_client_of_a_tls_scheduler_is_told_to_give_the_ca(tmp_path: Path) -> None:
    async with tls_scheduler(tmp_path, mutual=False) as served:
        tries = [await run_hodei("workers", "list", "-s", served.target, timeout=20) for _ in range(3)]
        listed = await run_hodei("workers", "list", "-s", served.target, "--tls-ca", str(served.pki.ca_file))

    assert listed.returncode == 0, listed
    for refused in tries:
        assert refused.returncode == 1
        [line] = refused.stderr.splitlines()
        assert line.startswith(
            f"error: the scheduler at {served.target} speaks TLS: give --tls-ca (the CA that signed its "
            "certificate) (UNAVAILABLE: "
        ), line
    handshakes = [e for e in events(served.log) if e["event"] == "scheduler.tls_handshake_failed"]
    assert [(e["level"], e["cause"]) for e in handshakes] == [
        ("warning", "a client spoke plaintext to this TLS port (it needs --tls-ca)")
    ]  # three clients (and their probes) refused, one line: rate-limited per cause


async def test_a_client_without_a_certificate_is_told_that_the_scheduler_requires_one(tmp_path: Path) -> None:
    async with tls_scheduler(tmp_path, mutual=True) as served:
        refused = await run_hodei(
            "workers", "list", "-s", served.target, "--tls-ca", str(served.pki.ca_file), timeout=20
        )
        listed = await run_hodei(
            "workers", "list", "-s", served.target, "--tls-ca", str(served.pki.ca_file),
            "--tls-cert", str(served.pki.client_cert_file), "--tls-key", str(served.pki.client_key_file),
        )  # fmt: skip

    assert listed.returncode == 0, listed
    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert line.startswith(
        f"error: the scheduler at {served.target} requires a client certificate (mutual TLS): give --tls-cert "
        "and --tls-key (a certificate signed by the CA of its --tls-client-ca) (UNAVAILABLE: "
    ), line
    causes = [e["cause"] for e in events(served.log) if e["event"] == "scheduler.tls_handshake_failed"]
    assert causes == [
        "a client sent no certificate and this port requires one (it needs --tls-cert and --tls-key)"
    ]


async def test_a_tls_client_of_a_plaintext_scheduler_is_told_to_drop_the_ca(tmp_path: Path) -> None:
    pki = write_test_pki(tmp_path / "pki")
    from tests.integration.helpers import scheduler_serve

    async with scheduler_serve("--store", "memory") as served:
        refused = await run_hodei("workers", "list", "-s", served.target, "--tls-ca", str(pki.ca_file))

    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert line.startswith(
        f"error: the scheduler at {served.target} does not speak TLS (plaintext): drop --tls-ca (UNAVAILABLE: "
    ), line
