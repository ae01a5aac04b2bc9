"""The baseline: raw grpc.aio unary calls of the same size as a registration, with no hodei code on either side.

``python -m hodei.bench.baseline --listen 127.0.0.1:0`` serves it in a process of its own and prints its port.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

import grpc

from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerRecord, WorkerType
from hodei.transport import _codec as codec

__all__ = ["METHOD", "request_bytes", "response_bytes", "serve"]

METHOD = "/hodei.bench.Baseline/Call"


def request_bytes() -> bytes:
    worker = DynamicWorker("bench-000000", WorkerType.DOCKER, DynamicWorkerConfig(labels={"bench": "true"}))
    return bytes(codec.worker_to_request(worker).SerializeToString())


def response_bytes() -> bytes:
    """As large as the scheduler's answer to that registration."""
    worker = DynamicWorker("bench-000000", WorkerType.DOCKER, DynamicWorkerConfig(labels={"bench": "true"}))
    now = datetime.now(UTC)
    record = WorkerRecord(
        worker_id=worker.worker_id,
        worker_type=worker.worker_type,
        capabilities=worker.capabilities,
        labels=worker.labels,
        registered_at=now,
        updated_at=now,
    )
    answer = codec.pb.RegisterWorkerResponse(
        status=codec.pb.REGISTRATION_STATUS_SUCCESS, worker=codec.record_to_proto(record), created=True
    )
    return bytes(answer.SerializeToString())


async def serve(listen: str) -> None:
    answer = response_bytes()

    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return answer

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "hodei.bench.Baseline", {"Call": grpc.unary_unary_rpc_method_handler(call)}
            ),
        )
    )
    port = server.add_insecure_port(listen)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
