"""Why a scheduler could not be reached, when gRPC only says ``UNAVAILABLE … Socket closed``.

A client that speaks plaintext to a TLS port, TLS to a plaintext one, or comes without a certificate to a port
that requires one, sees the connection closed and nothing more. :func:`tls_mismatch` asks the address itself
(a TCP connection and a TLS handshake that trusts anything: it learns what the port speaks, never sends a
token) and says which option is missing or too many.
"""

from __future__ import annotations

import socket
import ssl

from hodei.transport._addresses import host_and_port

__all__ = ["tls_mismatch", "unreachable_reason"]

_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def tls_mismatch(address: str, *, tls: bool, client_cert: bool, timeout: float = 2.0) -> str | None:
    """What is wrong between this client's TLS settings (``tls``: it speaks TLS; ``client_cert``: it presents a
    certificate) and what the scheduler at ``address`` (``HOST:PORT``) speaks; None when TLS is not the problem
    (nothing listens, or both sides agree). Blocks for at most about ``timeout`` seconds per step."""
    try:
        where = host_and_port(address.strip())  # the client's own reading of HOST:PORT ([::1]:50051 too)
    except ValueError:
        return None
    try:
        connection = socket.create_connection(where, timeout=timeout)
    except OSError:
        return None  # nothing listens there: gRPC's own message says so
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with connection:
        try:
            secured = context.wrap_socket(connection, server_hostname=where[0])
        except (ssl.SSLError, OSError):
            speaks_tls = False
        else:
            speaks_tls = True
            wants_certificate = _refuses_without_certificate(secured)
    if not speaks_tls:
        if tls:
            return f"the scheduler at {address} does not speak TLS (plaintext): drop --tls-ca"
        return None
    if not tls:
        also = " and requires a client certificate (--tls-cert, --tls-key)" if wants_certificate else ""
        return (
            f"the scheduler at {address} speaks TLS{also}: give --tls-ca (the CA that signed its certificate)"
        )
    if wants_certificate and not client_cert:
        return (
            f"the scheduler at {address} requires a client certificate (mutual TLS): give --tls-cert and "
            "--tls-key (a certificate signed by the CA of its --tls-client-ca)"
        )
    return None


def _refuses_without_certificate(secured: ssl.SSLSocket) -> bool:
    """Whether a TLS server closes a connection that presented no certificate: with TLS 1.3 the client's
    handshake completes, and the refusal (an alert, or the connection closed) comes with the first read, where
    a server that accepts the client answers with its HTTP/2 settings."""
    try:
        secured.sendall(_HTTP2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # preface, empty SETTINGS
        return secured.recv(1) == b""
    except ssl.SSLError as error:
        text = str(error).upper()
        return "CERTIFICATE" in text or "HANDSHAKE_FAILURE" in text
    except OSError:
        return False


def unreachable_reason(
    address: str, message: str, *, tls: bool, client_cert: bool, probe_tls: bool = True
) -> str:
    """The operator's words for why the scheduler at ``address`` could not be reached, given gRPC's
    ``UNAVAILABLE`` text ``message``: a TLS mismatch (asked of the port itself, unless ``probe_tls`` is False:
    a client that has spoken with this address before, with the same settings, knows TLS is not the problem),
    nothing listening, a name that does not resolve, a certificate not trusted, or else gRPC's own words
    (bounded). Blocks for a few seconds at most."""
    mismatch = tls_mismatch(address, tls=tls, client_cert=client_cert) if probe_tls else None
    if mismatch:
        return mismatch
    lowered = message.lower()
    if "connection refused" in lowered:
        return f"nothing listens at {address}: check the address (--scheduler) and that the scheduler runs"
    if "resolv" in lowered or "name or service not known" in lowered:
        return f"{address} does not resolve: check the host name (--scheduler)"
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return (
            f"the certificate of the scheduler at {address} is not signed by the CA of --tls-ca, or not for "
            "this host name"
        )
    if "deadline" in lowered or "timed out" in lowered or "timeout" in lowered:
        return f"no answer from {address}: check the address (--scheduler) and any firewall on the way"
    quoted = message if len(message) <= 200 else f"{message[:200]}… ({len(message)} chars)"
    return f"the scheduler at {address} cannot be reached: {quoted}"
