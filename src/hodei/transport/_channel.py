"""The one maker of a grpc.aio channel to a scheduler: the client's, the agent's and the embedded scheduler's."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from hodei.observability import _tracing as tracing
from hodei.security._tls import ClientTlsConfig
from hodei.transport._codec import SERVICE_NAME

__all__ = ["FAILOVER_CHANNEL_OPTIONS", "MAX_ANSWER_BYTES", "RECEIVE_OPTIONS", "open_channel"]

MAX_ANSWER_BYTES = 32 * 1024 * 1024
"""The largest answer a client accepts (gRPC's default is 4 MiB). A scheduler's largest answers stay under: a
RegisterWorkers answer echoes each entry's worker id (the request is at most 24 MiB,
``limits.DEFAULT_MAX_MESSAGE_BYTES``) with an error of under 8 KiB (``transport.status.MAX_STATUS_BYTES``) or
a slim record for each of at most 1,000 entries; a ListWorkers page is cut at ~1 MiB
(``registry.MAX_PAGE_BYTES``) plus one record; an event or a GetWorker answer is one record (under 100 KB
with the most labels allowed)."""

RECEIVE_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.max_receive_message_length", MAX_ANSWER_BYTES),)
"""The channel option every client of a scheduler needs: every channel :func:`open_channel` makes has it
(options passed in replace it key by key)."""

# The channel options of a client given several addresses; options passed in replace them key by key.
# pick_first tries the addresses in order and moves on when one cannot be reached or goes away: a client stays
# on one replica, the first that answers, as an agent given the same list does (the replica that holds an
# agent's stream is the one that can deliver its drain), instead of spreading its calls over all of them
# (("grpc.lb_policy_name", "round_robin") does that). A replica that shuts down answers CANCELLED to the calls
# it had received but not yet started (grpc/grpc#41785), and the registration adapter does not retry
# CANCELLED; gRPC retries those calls here, on the next replica. Any scheduler call may be repeated:
# registration is an idempotent upsert, the others are reads or idempotent commands.
FAILOVER_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.lb_policy_name", "pick_first"),
    (
        "grpc.service_config",
        json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{"service": SERVICE_NAME}],
                        "retryPolicy": {
                            "maxAttempts": 3,
                            "initialBackoff": "0.05s",
                            "maxBackoff": "0.5s",
                            "backoffMultiplier": 2,
                            "retryableStatusCodes": ["CANCELLED"],
                        },
                    }
                ]
            }
        ),
    ),
)


def open_channel(
    target: str,
    *,
    tls: ClientTlsConfig | None = None,
    options: Sequence[tuple[str, Any]] = (),
    traced: bool = True,
) -> grpc.aio.Channel:
    """A channel to the scheduler at ``target`` (any gRPC target), which the caller closes.

    It has :data:`RECEIVE_OPTIONS` and ``options`` (which replace them key by key), speaks TLS with ``tls``
    (trusting its CA, presenting its client certificate if it has one), and, when tracing is configured
    (:func:`hodei.observability._tracing.configure_tracing`) and ``traced``, makes a client span for each call
    and sends the W3C trace context along.
    """
    given = {key for key, _ in options}
    merged = [*(o for o in RECEIVE_OPTIONS if o[0] not in given), *options]
    interceptors = (tracing.client_interceptors() or None) if traced else None
    if tls is None:
        return grpc.aio.insecure_channel(target, options=merged, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, tls.channel_credentials(), options=merged, interceptors=interceptors
    )
