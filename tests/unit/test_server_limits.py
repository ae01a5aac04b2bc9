"""ServerLimits (what a scheduler lets a caller take) and StreamLimits' accounting, without a server."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from hodei.server._limits import ServerLimits, StreamLimits, peer_host


def test_server_limits_become_the_grpc_options_that_enforce_them() -> None:
    options = dict(
        ServerLimits(max_message_bytes=2048, min_ping_interval=0.25, handshake_timeout=3).options()
    )

    assert options["grpc.max_receive_message_length"] == 2048
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 250
    assert options["grpc.server_handshake_timeout_ms"] == 3000
    assert options["grpc.max_connection_idle_ms"] == 600_000
    assert options["grpc.max_concurrent_streams"] == 1000
    assert options["grpc.http2.max_ping_strikes"] == 2


class Peer:
    """What StreamLimits reads of a call: its peer; ``abort`` raises as grpc.aio's does."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        raise PermissionError(f"{code.name}: {details}")


async def test_the_cap_per_address_counts_each_address_apart_under_the_total() -> None:
    limits = StreamLimits(ServerLimits(max_streams=4, max_streams_per_peer=3))
    a, b = Peer("ipv4:10.0.0.1:5000"), Peer("ipv6:[fd00::2]:5001")

    for _ in range(3):
        await limits._enter(a, "Connect")  # type: ignore[arg-type]
    with pytest.raises(PermissionError, match=r"from 10\.0\.0\.1"):
        await limits._enter(a, "Connect")  # type: ignore[arg-type]
    await limits._enter(b, "WatchWorkers")  # type: ignore[arg-type]
    with pytest.raises(PermissionError, match="4 streams are open, the scheduler's limit"):
        await limits._enter(b, "Connect")  # type: ignore[arg-type]

    assert dict(limits.open_by_peer) == {"10.0.0.1": 3, "fd00::2": 1}
    assert (limits.open, limits.refused) == (4, 2)


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.1:5000", "10.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:[::ffff:127.0.0.1]:1", "::ffff:127.0.0.1"),
        ("unix:/tmp/s", "unix:/tmp/s"),
        ("unknown", "unknown"),
    ],
)
def test_peer_host_is_the_address_without_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


@pytest.mark.parametrize(
    "bad",
    [
        {"max_message_bytes": 10},
        {"max_streams": 0},
        {"max_streams_per_peer": 0},
        {"max_streams_per_peer": 30_000},
        {"max_connection_idle": 0},
        {"handshake_timeout": 0},
        {"min_ping_interval": -1},
        {"max_ping_strikes": -1},
        {"max_concurrent_streams": 0},
        {"stream_retry_after": -1},
    ],
)
def test_server_limits_refuse_values_that_would_not_limit_or_would_stop_everything(
    bad: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match=f"invalid ServerLimits: {next(iter(bad))} must be"):
        ServerLimits(**bad)
