"""The fleet's floor: what gRPC itself costs a server to hold N agents' streams and read their heartbeats.

``python -m hodei.bench.fleet_floor --listen 127.0.0.1:PORT --heartbeat-interval S`` serves just enough of the
scheduler's service for real agents to stay connected: ``Connect`` acknowledges the hello (the worker's record as
the agent sent it, ``AVAILABLE``, with the heartbeat interval and a lease of three of them), then reads and
decodes every message until the agent closes its side; ``UnregisterWorker`` answers ``SUCCESS``; every other
method is ``UNIMPLEMENTED``. It has no registry, no leases, no metrics and no store, and the same server options as
``hodei scheduler serve`` (its keepalive, limits and connection quota, after raising its open-files limit as it
does). It loads the same modules, so the two processes start from the same code in memory.

The fleet benchmark runs the same swarms of agents against it as against the scheduler, and reports its CPU and
RSS beside the scheduler's: the scheduler's cost above this floor is hodei's own.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc

from hodei.domain import record_of
from hodei.server._connections import default_max_connections, raise_open_files_limit
from hodei.server._limits import ServerLimits
from hodei.server._server import server_options
from hodei.transport import _codec as codec
from hodei.transport._codec import pb, pb_grpc

__all__ = ["FloorServicer", "serve"]

Context = Any  # grpc.aio.ServicerContext[pb.ConnectRequest, pb.ConnectResponse]


class FloorServicer(pb_grpc.SchedulerServiceServicer):
    """The two methods an agent calls, answered with nothing behind them; ``heartbeats`` counts those read."""

    def __init__(self, heartbeat_interval: float) -> None:
        self._interval_ms = round(heartbeat_interval * 1000)
        self.heartbeats = 0

    async def Connect(self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Context) -> None:
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("message") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "hello must be the first message of the stream"
            )
        worker = codec.worker_from_request(first.hello)
        record = record_of(worker, registered_at=datetime.now(UTC), lease_ttl=3 * self._interval_ms / 1000)
        ack = pb.ConnectAck(
            worker=codec.record_to_proto(record),
            created=True,
            heartbeat_interval_ms=self._interval_ms,
            lease_ttl_ms=3 * self._interval_ms,
        )
        await context.write(pb.ConnectResponse(ack=ack))
        while (message := await context.read()) is not grpc.aio.EOF:
            if message.WhichOneof("message") == "heartbeat":
                self.heartbeats += 1

    async def UnregisterWorker(
        self, request: pb.UnregisterWorkerRequest, context: Context
    ) -> pb.UnregisterWorkerResponse:
        return pb.UnregisterWorkerResponse(status=pb.UNREGISTRATION_STATUS_SUCCESS)


async def serve(listen: str, heartbeat_interval: float, *, max_streams: int = 20_000) -> None:
    """Serve the floor on ``listen`` until killed."""
    _, soft, _ = raise_open_files_limit()
    limits = ServerLimits(
        max_streams=max_streams,
        max_streams_per_peer=max_streams,
        max_connections=default_max_connections(soft),
    )
    server = grpc.aio.server(options=server_options(limits))
    pb_grpc.add_SchedulerServiceServicer_to_server(FloorServicer(heartbeat_interval), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hodei.bench.fleet_floor", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--heartbeat-interval", type=float, default=5.0)
    parser.add_argument("--max-streams", type=int, default=20_000)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.heartbeat_interval, max_streams=args.max_streams))


if __name__ == "__main__":
    main()
