"""gRPC core's own log lines become structured events, rate-limited per cause."""

from __future__ import annotations

import logging

import pytest

from hodei.observability._native_log import NativeLogRouter
from hodei.testing import FakeClock

PLAINTEXT = (
    "I1205 14:50:14.474276   13433 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: "
    "error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification context\n"
)
NO_CERTIFICATE = (
    "I1205 14:50:15.000000   13433 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: "
    "error:1000007e:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE\n"
)
BIND = "E1205 14:51:15.707553   24983 add_port.cc:83] Failed to add port to server: Address already in use\n"


def routed(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int, dict[str, object]]]:
    keys = ("cause", "severity", "source", "detail", "line", "suppressed")
    return [
        (r.getMessage(), r.levelno, {k: getattr(r, k) for k in keys if hasattr(r, k)})
        for r in caplog.records
        if r.name == "hodei.grpc"
    ]


def test_handshake_failures_are_one_event_per_cause_per_interval_then_say_how_many_were_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    router = NativeLogRouter(interval=60.0, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="hodei.grpc"):
        for _ in range(24):
            router.line(PLAINTEXT)
        router.line(NO_CERTIFICATE)
        clock.advance(61.0)
        router.line(PLAINTEXT)

    plaintext = "a client spoke plaintext to this TLS port (it needs --tls-ca)"
    assert routed(caplog) == [
        ("scheduler.tls_handshake_failed", logging.WARNING, {"cause": plaintext}),
        (
            "scheduler.tls_handshake_failed",
            logging.WARNING,
            {
                "cause": "a client sent no certificate and this port requires one (it needs --tls-cert and --tls-key)"
            },
        ),
        ("scheduler.tls_handshake_failed", logging.WARNING, {"cause": plaintext, "suppressed": 23}),
    ]


def test_other_core_lines_keep_their_severity_and_source_and_foreign_lines_are_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = NativeLogRouter()
    with caplog.at_level(logging.DEBUG, logger="hodei.grpc"):
        router.line(BIND)
        router.line("x" * 100_000 + "\n")
        router.line("\n")

    [bind, foreign] = routed(caplog)
    assert bind == (
        "grpc.core",
        logging.ERROR,
        {
            "severity": "E",
            "source": "add_port.cc:83",
            "detail": "Failed to add port to server: Address already in use",
        },
    )
    assert foreign == ("native.stderr", logging.WARNING, {"line": "x" * 512})
