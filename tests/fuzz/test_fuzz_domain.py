"""Fuzzed values through the domain's validation, no I/O: the control plane (before it sends) and the scheduler
(after it decodes) name the same fields for the same worker, and validation never fails on any value.

Examples per property (derandomized): :data:`EXAMPLES`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hodei.domain import (
    DynamicWorker,
    DynamicWorkerConfig,
    WorkerCapabilities,
    WorkerRecord,
    WorkerType,
    validate_record,
    validate_worker,
    validate_worker_fields,
)
from hodei.errors import InvalidWorkerData
from hodei.transport import _codec as codec
from hodei.transport._codec import pb
from tests.fuzz import strategies as fuzz

EXAMPLES = {
    "client_and_server_agree": 500,
    "validation_is_total": 500,
    "shapes_change_nothing": 500,
    "encoder_changes_nothing": 300,
}

FIELD_PATHS = {
    "worker_id",
    "capabilities",
    "capabilities.cpu_cores",
    "capabilities.memory_mb",
    "capabilities.disk_mb",
    "capabilities.gpu_count",
    "metadata.worker_type",
    "metadata.labels",
    "metadata.pool",
    "metadata.hostname",
    "metadata.agent_version",
}


def fuzzing(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


workers = st.builds(
    lambda worker_id, worker_type, caps, labels, pool, hostname, incarnation: DynamicWorker(
        worker_id,
        worker_type,
        DynamicWorkerConfig(
            worker_type=worker_type,
            cpu_cores=caps.cpu_cores,
            memory_mb=caps.memory_mb,
            disk_mb=caps.disk_mb,
            gpu_count=caps.gpu_count,
            labels=labels,
            pool=pool,
        ),
        incarnation=incarnation,
        hostname=hostname,
    ),
    fuzz.worker_ids,
    st.sampled_from(WorkerType),
    fuzz.capabilities,
    fuzz.labels,
    fuzz.names,
    fuzz.names,
    fuzz.incarnations,
)


def path(field: str) -> str:
    """A field's path without the label key (``metadata.labels['k']`` -> ``metadata.labels``)."""
    return field.split("[", 1)[0]


@fuzzing("client_and_server_agree")
@given(worker=workers)
def test_the_client_and_the_scheduler_name_the_same_fields_for_the_same_worker(worker: DynamicWorker) -> None:
    before_sending = validate_worker(worker)

    request = codec.worker_to_request(worker)
    try:
        record = codec.record_from_request(request, registered_at=datetime.now(UTC))
    except InvalidWorkerData as refused:  # what a record cannot represent is refused while decoding
        after_decoding = list(refused.violations)
    else:
        after_decoding = validate_record(record)

    # Labels are a map: the two sides may meet bad labels in a different order, never different ones.
    assert Counter(v.field for v in after_decoding) == Counter(v.field for v in before_sending)
    assert [v.field for v in after_decoding if "[" not in v.field] == [
        v.field for v in before_sending if "[" not in v.field
    ]


@fuzzing("validation_is_total")
@given(request=fuzz.register_worker_requests)
def test_validation_never_fails_and_names_only_fields_of_the_contract(
    request: pb.RegisterWorkerRequest,
) -> None:
    metadata = request.metadata
    caps = request.capabilities
    found = validate_worker_fields(
        worker_id=request.worker_id,
        worker_type=metadata.worker_type,
        capabilities=WorkerCapabilities(caps.cpu_cores, caps.memory_mb, caps.disk_mb, caps.gpu_count),
        labels=dict(metadata.labels),
        pool=metadata.pool,
        hostname=metadata.hostname,
        agent_version=metadata.agent_version,
    )

    assert {path(v.field) for v in found} <= FIELD_PATHS
    assert all(v.description for v in found)


_NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

# Shared by every example (as a scheduler's are by every call), and small, so that examples meet shapes kept by
# earlier ones and push the oldest out.
SHAPES = codec.Shapes(size=4)
ENCODER = codec.RequestEncoder(size=4)


def decoded(
    request: pb.RegisterWorkerRequest, shapes: codec.Shapes | None
) -> WorkerRecord | InvalidWorkerData:
    try:
        return codec.record_from_request(request, registered_at=_NOW, shapes=shapes)
    except InvalidWorkerData as refused:
        return refused


@fuzzing("shapes_change_nothing")
@given(request=st.one_of(fuzz.valid_register_worker_requests, fuzz.register_worker_requests))
def test_a_request_decoded_in_a_kept_shape_is_the_record_it_is_alone(
    request: pb.RegisterWorkerRequest,
) -> None:
    alone = decoded(request, None)

    for _ in range(2):  # the second time, its shape is kept if it is valid
        shaped = decoded(request, SHAPES)
        if isinstance(alone, InvalidWorkerData):
            assert isinstance(shaped, InvalidWorkerData)
            assert shaped.violations == alone.violations
        else:
            assert shaped == alone
            assert shaped.verdict == alone.verdict
    assert len(SHAPES) <= 4


def encoded(worker: DynamicWorker) -> pb.RegisterWorkerRequest | InvalidWorkerData:
    try:
        return codec.worker_to_request(worker)
    except InvalidWorkerData as unencodable:
        return unencodable


@fuzzing("encoder_changes_nothing")
@given(
    # Some workers of a batch share another's config (and its hostname, or not): their encoding is kept.
    batch=st.lists(workers, min_size=1, max_size=4).flatmap(
        lambda made: st.lists(
            st.one_of(
                st.sampled_from(made),
                st.builds(
                    lambda worker, worker_id, incarnation: dataclasses.replace(
                        worker, worker_id=worker_id, incarnation=incarnation
                    ),
                    st.sampled_from(made),
                    fuzz.worker_ids,
                    fuzz.incarnations,
                ),
            ),
            max_size=6,
        )
    )
)
def test_the_clients_encoder_sends_what_each_worker_encodes_to(batch: list[DynamicWorker]) -> None:
    expected = [encoded(worker) for worker in batch]

    for _ in range(2):  # the second time, the encodings are kept
        request, refused = ENCODER.batch(batch)
        assert list(request.workers) == [e for e in expected if not isinstance(e, InvalidWorkerData)]
        assert [r is None for r in refused] == [not isinstance(e, InvalidWorkerData) for e in expected]
        for refusal, alone in zip(refused, expected, strict=True):
            if isinstance(alone, InvalidWorkerData):
                assert refusal is not None
                assert refusal.violations == alone.violations
        for worker, alone in zip(batch, expected, strict=True):
            if not isinstance(alone, InvalidWorkerData):
                assert ENCODER.request(worker) == alone
    assert len(ENCODER) <= 4
