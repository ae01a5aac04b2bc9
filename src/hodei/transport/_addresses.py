"""The scheduler addresses a client is given: read (one gRPC target, or a list of ``HOST:PORT``), resolved, and
made into the one target gRPC dials.

None of it dials: the client (:mod:`hodei.transport._client`) reads its target with
:func:`scheduler_addresses`, and so does the command line to check ``--scheduler``; the agent's diagnosis
(:mod:`hodei.transport._diagnosis`) reads an address as the client does (:func:`host_and_port`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence

from hodei.errors import SchedulerUnavailable

__all__ = ["channel_target", "host_and_port", "scheduler_addresses"]

# A gRPC target URI (``dns:///name:50051``, ``unix:/path``, ``ipv4:a:1,b:2``): a scheme not followed by a port.
_TARGET_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?![0-9]*\s*(?:,|$))")
_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})")

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def scheduler_addresses(target: str | Sequence[str], *, explicit_port: bool = False) -> tuple[str, ...]:
    """The scheduler addresses in ``target``: a sequence of addresses, or one string of comma-separated ones.

    A single address may be any gRPC target (a URI such as ``dns:///scheduler:50051`` stays whole, commas and
    all; ``localhost`` is dialled on gRPC's default port) unless ``explicit_port`` (as the command line says);
    each of several must be ``HOST:PORT``, an IPv6 address in brackets (``[::1]:50051``). Raises
    ``ValueError`` naming the entry that is not.
    """
    entries = [target] if isinstance(target, str) else list(target)
    if len(entries) == 1 and _TARGET_URI.match(entries[0].strip()):
        return (entries[0].strip(),)
    addresses = tuple(part.strip() for entry in entries for part in entry.split(","))
    if not any(addresses):
        raise ValueError(f"no scheduler address in {','.join(entries)!r}")
    if "" in addresses:
        raise ValueError(f"an empty scheduler address in {','.join(entries)!r}")
    if len(addresses) > 1 or explicit_port:
        for address in addresses:
            host_and_port(address)
    return addresses


def host_and_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` read (an IPv6 host without its brackets); ``ValueError`` saying what is wrong."""
    match = _HOST_PORT.fullmatch(address)
    if match is None:
        if re.search(r":[0-9]+$", address) is None:
            raise ValueError(f"scheduler address {address!r} has no port: expected HOST:PORT")
        raise ValueError(
            f"scheduler address {address!r} is not HOST:PORT "
            "(each of several addresses is HOST:PORT; an IPv6 address goes in brackets, [::1]:50051)"
        )
    port = int(match["port"])
    if not 0 < port < 65536:
        raise ValueError(f"scheduler address {address!r}: port {port} is out of range")
    if match["ipv6"] is None:
        return match["host"], port
    try:
        return str(ipaddress.IPv6Address(match["ipv6"])), port
    except ValueError:
        raise ValueError(f"scheduler address {address!r}: {match['ipv6']!r} is not an IPv6 address") from None


def _resolve(address: str) -> list[tuple[_IPAddress, int]]:
    """The IP addresses of ``HOST:PORT``: its literal, or every address its host name resolves to."""
    host, port = host_and_port(address)
    try:
        return [(ipaddress.ip_address(host), port)]
    except ValueError:
        pass  # a host name
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise SchedulerUnavailable(
            f"scheduler address {address!r}: cannot resolve {host!r}: {error}"
        ) from error
    return [(ipaddress.ip_address(sockaddr[0]), port) for *_, sockaddr in found]


def channel_target(addresses: Sequence[str]) -> str:
    """gRPC's target: one address as it is; several as a list of IP literals, the ``ipv4:``/``ipv6:`` schemes
    being the only ones that take a list (so host names are resolved once, here)."""
    if len(addresses) == 1:
        return addresses[0]
    endpoints = dict.fromkeys(endpoint for address in addresses for endpoint in _resolve(address))
    if all(ip.version == 4 for ip, _ in endpoints):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in endpoints)
    # A list holds one family: IPv4 addresses join IPv6 ones as IPv4-mapped IPv6 addresses.
    return "ipv6:" + ",".join(
        f"[{ip if ip.version == 6 else f'::ffff:{ip}'}]:{port}" for ip, port in endpoints
    )
