"""``/metrics`` over HTTPS and mutual TLS, and a client that connects and says nothing never stops the scrapes."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from hodei._infra.fixtures import skip_or_fail_for_missing
from hodei.observability._http import MetricsEndpoint
from hodei.security import TestPki, TlsConfig, write_test_pki


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return write_test_pki(tmp_path / "pki")


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("hodei_test_scrapes", "A counter to find in the scrape.", registry=registry).inc()
    return registry


def scrape(url: str, context: ssl.SSLContext | None) -> bytes:
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        body: bytes = response.read()
    return body


def trusting(pki: TestPki, *, certificate: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if certificate:
        context.load_cert_chain(str(pki.client_cert_file), str(pki.client_key_file))
    return context


def test_metrics_over_https_answer_a_client_that_trusts_the_ca(
    pki: TestPki, registry: CollectorRegistry
) -> None:
    with MetricsEndpoint(registry, tls=TlsConfig(pki.server_cert_file, pki.server_key_file)) as endpoint:
        body = scrape(endpoint.url, trusting(pki))
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            scrape(endpoint.url.replace("https://", "http://"), None)

    assert endpoint.url.startswith("https://127.0.0.1:")
    assert b"hodei_test_scrapes_total 1.0" in body


def test_metrics_over_https_refuse_a_client_that_trusts_another_ca(
    pki: TestPki, registry: CollectorRegistry, tmp_path: Path
) -> None:
    other = write_test_pki(tmp_path / "other")
    with (
        MetricsEndpoint(registry, tls=TlsConfig(pki.server_cert_file, pki.server_key_file)) as endpoint,
        pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        scrape(endpoint.url, trusting(other))


def test_metrics_over_mutual_tls_need_a_client_certificate_from_the_ca(
    pki: TestPki, registry: CollectorRegistry
) -> None:
    tls = TlsConfig(pki.server_cert_file, pki.server_key_file, pki.ca_file)
    with MetricsEndpoint(registry, tls=tls) as endpoint:
        body = scrape(endpoint.url, trusting(pki, certificate=True))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            scrape(endpoint.url, trusting(pki))

    assert b"hodei_test_scrapes_total 1.0" in body


def test_a_silent_client_does_not_stop_other_scrapes(pki: TestPki, registry: CollectorRegistry) -> None:
    with MetricsEndpoint(registry, tls=TlsConfig(pki.server_cert_file, pki.server_key_file)) as endpoint:
        silent = [socket.create_connection(("127.0.0.1", endpoint.port), timeout=5) for _ in range(3)]
        try:
            body = scrape(endpoint.url, trusting(pki))
        finally:
            for sock in silent:
                sock.close()

    assert b"hodei_test_scrapes_total 1.0" in body


def test_a_metrics_endpoint_names_a_bad_certificate_file_when_made(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("nothing")

    with pytest.raises(ValueError, match=r"bogus\.pem holds no PEM certificate"):
        MetricsEndpoint(registry, tls=TlsConfig(bogus, bogus))


def test_metrics_over_https_on_the_ipv6_loopback(pki: TestPki, registry: CollectorRegistry) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        skip_or_fail_for_missing(f"an IPv6 loopback (::1) to bind: {error}")
    with MetricsEndpoint(
        registry, "[::1]:0", tls=TlsConfig(pki.server_cert_file, pki.server_key_file)
    ) as endpoint:
        body = scrape(endpoint.url, trusting(pki))

    assert endpoint.url.startswith("https://[::1]:")
    assert b"hodei_test_scrapes_total 1.0" in body
