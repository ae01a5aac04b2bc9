"""The only door to the generated protobuf code: proto messages <-> domain objects.

:mod:`._records` converts workers and records (a registration, an agent's hello, a record and its statuses,
capabilities, usage, timestamps); :mod:`._outcomes` what the scheduler answers and tells (receipts, results
and a refusal's field violations, unregistrations, filters, commands, events).
"""

from hodei.transport._codec._outcomes import (
    command_from_proto,
    command_to_proto,
    event_from_proto,
    event_to_proto,
    filter_from_proto,
    filter_to_proto,
    receipt_from_proto,
    registration_result_to_proto,
    result_from_proto,
    unregister_incarnation,
    unregister_request,
    unregistration_from_proto,
    unregistration_to_proto,
)
from hodei.transport._codec._records import (
    SERVICE_NAME,
    hello_from_worker,
    record_from_proto,
    record_from_request,
    record_to_proto,
    status_from_proto,
    status_to_proto,
    usage_from_proto,
    usage_to_proto,
    worker_from_request,
    worker_to_request,
    workers_to_requests,
)
from hodei.transport._generated.hodei.scheduler.v1 import scheduler_pb2 as pb
from hodei.transport._generated.hodei.scheduler.v1 import scheduler_pb2_grpc as pb_grpc

__all__ = [
    "SERVICE_NAME",
    "command_from_proto",
    "command_to_proto",
    "event_from_proto",
    "event_to_proto",
    "filter_from_proto",
    "filter_to_proto",
    "hello_from_worker",
    "pb",
    "pb_grpc",
    "receipt_from_proto",
    "record_from_proto",
    "record_from_request",
    "record_to_proto",
    "registration_result_to_proto",
    "result_from_proto",
    "status_from_proto",
    "status_to_proto",
    "unregister_incarnation",
    "unregister_request",
    "unregistration_from_proto",
    "unregistration_to_proto",
    "usage_from_proto",
    "usage_to_proto",
    "worker_from_request",
    "worker_to_request",
    "workers_to_requests",
]
