"""The domain: how workers are built, and what makes one valid (every invalid field named by its wire path)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from hodei.domain import (
    Assignment,
    DynamicWorker,
    DynamicWorkerConfig,
    FieldViolation,
    WorkerCapabilities,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
    record_in_shape,
    record_of,
    validate_record,
    validate_worker,
    validate_worker_fields,
    validate_worker_id,
    wire_size,
)
from tests.helpers import make_worker

VALID_CAPABILITIES = WorkerCapabilities(cpu_cores=2, memory_mb=4096)
# The client and the scheduler name the same field with the same words (the description travels in the
# BadRequest detail), so a description is part of the contract and is checked exactly.
NAME_RULE = "must be at most 253 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"


def fields_of(violations: list[FieldViolation]) -> list[str]:
    return [violation.field for violation in violations]


def violations_for(**overrides: object) -> list[FieldViolation]:
    """validate_worker_fields over a valid registration with some fields replaced."""
    values: dict[str, object] = {
        "worker_id": "worker-1",
        "worker_type": "docker",
        "capabilities": VALID_CAPABILITIES,
        "labels": {},
        "pool": "default",
        "hostname": "",
        "agent_version": "",
    }
    values.update(overrides)
    return validate_worker_fields(**values)  # type: ignore[arg-type]


# --- construction ---------------------------------------------------------------------------------------


def test_config_is_constructed_with_keywords_and_defaults_the_rest() -> None:
    config = DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=4, memory_mb=8192)

    assert config.worker_type is WorkerType.DOCKER
    assert config.capabilities == WorkerCapabilities(cpu_cores=4, memory_mb=8192, disk_mb=0, gpu_count=0)
    assert dict(config.labels) == {}
    assert config.pool == "default"
    assert config.image is None
    assert config.violations() == []


def test_worker_is_constructed_positionally_and_starts_provisioning() -> None:
    config = DynamicWorkerConfig()
    worker = DynamicWorker("worker-1", WorkerType.DOCKER, config)

    assert worker.worker_id == "worker-1"
    assert worker.worker_type is WorkerType.DOCKER
    assert worker.config is config
    assert worker.status is WorkerStatus.PROVISIONING
    assert worker.incarnation == 0
    assert worker.hostname == ""
    assert worker.capabilities == WorkerCapabilities(cpu_cores=2, memory_mb=4096)
    assert worker.pool == "default"
    assert worker.violations() == []


def test_labels_cannot_be_changed_after_construction() -> None:
    labels = {"arch": "amd64"}
    config = DynamicWorkerConfig(labels=labels)
    worker = DynamicWorker("worker-1", WorkerType.DOCKER, config)

    with pytest.raises(TypeError):
        config.labels["arch"] = "arm64"  # type: ignore[index]
    with pytest.raises(TypeError):
        worker.labels["os"] = "linux"  # type: ignore[index]
    labels["arch"] = "arm64"  # the caller's dict was copied, not kept

    assert dict(worker.labels) == {"arch": "amd64"}


def test_record_labels_cannot_be_changed_after_construction() -> None:
    record = WorkerRecord(
        worker_id="worker-1",
        worker_type=WorkerType.DOCKER,
        capabilities=VALID_CAPABILITIES,
        labels={"arch": "amd64"},
    )

    with pytest.raises(TypeError):
        record.labels["arch"] = "arm64"  # type: ignore[index]
    assert dict(record.labels) == {"arch": "amd64"}


def test_workers_and_configs_are_frozen() -> None:
    worker = make_worker("worker-1")

    with pytest.raises(dataclasses.FrozenInstanceError):
        worker.status = WorkerStatus.AVAILABLE  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        worker.config.cpu_cores = 8  # type: ignore[misc]


def test_with_status_returns_a_new_worker_and_leaves_the_original_unchanged() -> None:
    worker = make_worker("worker-1", cpu_cores=4)

    available = worker.with_status(WorkerStatus.AVAILABLE)

    assert available.status is WorkerStatus.AVAILABLE
    assert worker.status is WorkerStatus.PROVISIONING
    assert available == dataclasses.replace(worker, status=WorkerStatus.AVAILABLE)


def test_record_to_worker_carries_every_field_the_control_plane_knows() -> None:
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    record = WorkerRecord(
        worker_id="worker-1",
        worker_type=WorkerType.PROCESS,
        capabilities=WorkerCapabilities(cpu_cores=8, memory_mb=16384, disk_mb=100_000, gpu_count=2),
        status=WorkerStatus.BUSY,
        labels={"arch": "amd64"},
        pool="gpu",
        hostname="build-01.lan",
        agent_version="1.2.3",
        incarnation=7,
        registered_at=moment,
        updated_at=moment,
    )

    worker = record.to_worker()

    assert worker == DynamicWorker(
        "worker-1",
        WorkerType.PROCESS,
        DynamicWorkerConfig(
            worker_type=WorkerType.PROCESS,
            cpu_cores=8,
            memory_mb=16384,
            disk_mb=100_000,
            gpu_count=2,
            labels={"arch": "amd64"},
            pool="gpu",
        ),
        WorkerStatus.BUSY,
        7,
        "build-01.lan",
    )


# --- worker id ------------------------------------------------------------------------------------------


WORKER_ID_RULE = "must start with a letter or digit and contain only letters, digits, '.', '_' and '-'"


@pytest.mark.parametrize(
    ("worker_id", "description"),
    [
        ("", "must not be empty"),
        ("w" * 129, "must be at most 128 characters"),
        *(
            (worker_id, WORKER_ID_RULE)
            for worker_id in [
                "worker 1",
                "-worker",
                ".worker",
                "worker/1",
                "wörker",
                "worker:1",
                "-starts-with-a-dash",
            ]
        ),
    ],
)
def test_a_bad_worker_id_is_described_in_the_contracts_words(worker_id: str, description: str) -> None:
    assert validate_worker_id(worker_id) == [FieldViolation("worker_id", description)]
    assert violations_for(worker_id=worker_id) == [FieldViolation("worker_id", description)]


@pytest.mark.parametrize("worker_id", ["w", "1", "worker-1", "Worker_1.a-b", "0.0.0", "w" * 128])
def test_a_worker_id_of_up_to_128_letters_digits_dots_underscores_and_dashes_is_accepted(
    worker_id: str,
) -> None:
    assert violations_for(worker_id=worker_id) == []


def test_a_config_has_no_worker_id_to_check() -> None:
    assert violations_for(worker_id=None) == []


# --- capabilities ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capabilities", "field"),
    [
        (WorkerCapabilities(cpu_cores=0, memory_mb=4096), "capabilities.cpu_cores"),
        (WorkerCapabilities(cpu_cores=-1, memory_mb=4096), "capabilities.cpu_cores"),
        (WorkerCapabilities(cpu_cores=4097, memory_mb=4096), "capabilities.cpu_cores"),
        (WorkerCapabilities(cpu_cores=2, memory_mb=0), "capabilities.memory_mb"),
        (WorkerCapabilities(cpu_cores=2, memory_mb=-1), "capabilities.memory_mb"),
        (WorkerCapabilities(cpu_cores=2, memory_mb=64 * 1024 * 1024 + 1), "capabilities.memory_mb"),
        (WorkerCapabilities(cpu_cores=2, memory_mb=4096, disk_mb=-1), "capabilities.disk_mb"),
        (WorkerCapabilities(cpu_cores=2, memory_mb=4096, disk_mb=1024**3 + 1), "capabilities.disk_mb"),
        (WorkerCapabilities(cpu_cores=2, memory_mb=4096, gpu_count=-1), "capabilities.gpu_count"),
        (WorkerCapabilities(cpu_cores=2, memory_mb=4096, gpu_count=1025), "capabilities.gpu_count"),
    ],
)
def test_a_capability_out_of_range_is_reported_by_its_field(
    capabilities: WorkerCapabilities, field: str
) -> None:
    assert fields_of(violations_for(capabilities=capabilities)) == [field]


def test_a_capability_violation_says_the_range_and_the_value() -> None:
    capabilities = WorkerCapabilities(cpu_cores=0, memory_mb=4096)

    assert violations_for(capabilities=capabilities) == [
        FieldViolation("capabilities.cpu_cores", "must be between 1 and 4096, got 0")
    ]


def test_capabilities_at_their_limits_are_accepted() -> None:
    lowest = WorkerCapabilities(cpu_cores=1, memory_mb=1, disk_mb=0, gpu_count=0)
    highest = WorkerCapabilities(cpu_cores=4096, memory_mb=64 * 1024 * 1024, disk_mb=1024**3, gpu_count=1024)

    assert violations_for(capabilities=lowest) == []
    assert violations_for(capabilities=highest) == []


def test_missing_capabilities_are_reported() -> None:
    assert violations_for(capabilities=None) == [FieldViolation("capabilities", "is required")]


# --- worker type ----------------------------------------------------------------------------------------


def test_an_unknown_worker_type_is_reported() -> None:
    assert violations_for(worker_type="vm") == [
        FieldViolation(
            "metadata.worker_type", "must be one of docker, process, kubernetes, static, mock, got 'vm'"
        )
    ]


@pytest.mark.parametrize("worker_type", list(WorkerType))
def test_every_known_worker_type_is_accepted(worker_type: WorkerType) -> None:
    assert violations_for(worker_type=worker_type.value) == []


# --- labels ---------------------------------------------------------------------------------------------


def test_64_labels_are_accepted() -> None:
    labels = {f"key-{n}": "value" for n in range(64)}

    assert violations_for(labels=labels) == []


def test_65_labels_are_reported() -> None:
    labels = {f"key-{n}": "value" for n in range(65)}

    assert violations_for(labels=labels) == [FieldViolation("metadata.labels", "at most 64 labels, got 65")]


@pytest.mark.parametrize("key", ["bad key", "-key", "key-", "", "k" * 64, "kéy"])
def test_a_bad_label_key_is_reported_at_its_own_path(key: str) -> None:
    where = f"metadata.labels[{key[:63]!r}]"

    assert fields_of(violations_for(labels={key: "value"})) == [where]


def test_a_label_key_with_spaces_is_named_exactly() -> None:
    assert fields_of(violations_for(labels={"bad key": "v"})) == ["metadata.labels['bad key']"]


def test_a_label_key_that_ends_with_a_slash_is_described_in_the_contracts_words() -> None:
    assert validate_record(valid_record(labels={"team/": "ci"})) == [
        FieldViolation(
            "metadata.labels['team/']",
            "key must be 1 to 63 letters, digits, '.', '_', '/' or '-', starting and ending with a letter or digit",
        )
    ]


@pytest.mark.parametrize("key", ["k", "arch", "kubernetes.io/arch", "a_b-c.d", "k" * 63])
def test_a_well_formed_label_key_is_accepted(key: str) -> None:
    assert violations_for(labels={key: "value"}) == []


def test_a_label_value_of_256_characters_is_accepted() -> None:
    assert violations_for(labels={"note": "v" * 256}) == []


def test_an_over_long_label_value_is_reported_at_its_key() -> None:
    assert violations_for(labels={"note": "v" * 257}) == [
        FieldViolation("metadata.labels['note']", "value must be at most 256 characters")
    ]


def test_a_label_with_a_bad_key_and_an_over_long_value_reports_both() -> None:
    violations = violations_for(labels={"bad key": "v" * 257})

    assert fields_of(violations) == ["metadata.labels['bad key']", "metadata.labels['bad key']"]
    assert violations[1].description == "value must be at most 256 characters"


# --- pool, hostname, agent version ----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["pool", "hostname", "agent_version"])
@pytest.mark.parametrize("value", ["-pool", "pool-", "my pool", "pool!", "x" * 254])
def test_a_bad_name_is_reported_at_its_metadata_path(field: str, value: str) -> None:
    assert fields_of(violations_for(**{field: value})) == [f"metadata.{field}"]


@pytest.mark.parametrize("field", ["pool", "hostname", "agent_version"])
@pytest.mark.parametrize("value", ["", "a", "build-01.lan", "1.2.3", "gpu_pool", "x" * 253])
def test_a_well_formed_or_empty_name_is_accepted(field: str, value: str) -> None:
    assert violations_for(**{field: value}) == []


# --- a stored record --------------------------------------------------------------------------------------------------


def valid_record(**overrides: object) -> WorkerRecord:
    values: dict[str, object] = {
        "worker_id": "worker-1",
        "worker_type": WorkerType.DOCKER,
        "capabilities": WorkerCapabilities(cpu_cores=2, memory_mb=4096),
        "pool": "default",
        "hostname": "host-1",
        "agent_version": "1.2.3",
    }
    values.update(overrides)
    return WorkerRecord(**values)  # type: ignore[arg-type]


def test_a_valid_record_has_no_violations() -> None:
    assert validate_record(valid_record()) == []


def test_a_record_is_checked_for_its_worker_id() -> None:
    assert validate_record(valid_record(worker_id="")) == [FieldViolation("worker_id", "must not be empty")]


def test_a_record_is_checked_for_its_pool_hostname_and_agent_version_each_by_name() -> None:
    record = valid_record(pool="-pool", hostname="host_", agent_version="1.2.3!")
    assert validate_record(record) == [
        FieldViolation("metadata.pool", NAME_RULE),
        FieldViolation("metadata.hostname", NAME_RULE),
        FieldViolation("metadata.agent_version", NAME_RULE),
    ]


def test_a_name_that_ends_with_a_dot_is_described_in_the_contracts_words() -> None:
    assert validate_record(valid_record(pool="pool.")) == [FieldViolation("metadata.pool", NAME_RULE)]


# --- all at once ----------------------------------------------------------------------------------------


def test_every_violation_of_one_registration_is_reported_together_in_field_order() -> None:
    violations = validate_worker_fields(
        worker_id="bad id",
        worker_type="vm",
        capabilities=WorkerCapabilities(cpu_cores=0, memory_mb=-1, disk_mb=-1, gpu_count=-1),
        labels={"bad key": "v", "note": "v" * 257},
        pool="-pool",
        hostname="bad host",
        agent_version="1.0-",
    )

    assert fields_of(violations) == [
        "worker_id",
        "capabilities.cpu_cores",
        "capabilities.memory_mb",
        "capabilities.disk_mb",
        "capabilities.gpu_count",
        "metadata.worker_type",
        "metadata.labels['bad key']",
        "metadata.labels['note']",
        "metadata.pool",
        "metadata.hostname",
        "metadata.agent_version",
    ]


def test_validate_worker_reports_every_violation_of_a_worker_together() -> None:
    config = DynamicWorkerConfig(
        worker_type=WorkerType.DOCKER,
        cpu_cores=0,
        memory_mb=0,
        disk_mb=-5,
        gpu_count=-1,
        labels={"bad key": "v"},
        pool="bad pool",
    )
    worker = DynamicWorker("", WorkerType.DOCKER, config, hostname="-host")

    expected = [
        "worker_id",
        "capabilities.cpu_cores",
        "capabilities.memory_mb",
        "capabilities.disk_mb",
        "capabilities.gpu_count",
        "metadata.labels['bad key']",
        "metadata.pool",
        "metadata.hostname",
    ]
    assert fields_of(validate_worker(worker)) == expected
    assert worker.violations() == validate_worker(worker)


def test_config_violations_report_every_invalid_field_but_no_worker_id() -> None:
    config = DynamicWorkerConfig(
        worker_type=WorkerType.KUBERNETES,
        cpu_cores=-2,
        memory_mb=64 * 1024 * 1024 + 1,
        labels={f"key-{n}": "v" for n in range(65)},
        pool="pool-",
    )

    assert fields_of(config.violations()) == [
        "capabilities.cpu_cores",
        "capabilities.memory_mb",
        "metadata.labels",
        "metadata.pool",
    ]


def test_a_valid_worker_has_no_violations() -> None:
    config = DynamicWorkerConfig(
        worker_type=WorkerType.STATIC,
        cpu_cores=8,
        memory_mb=16384,
        disk_mb=500_000,
        gpu_count=1,
        labels={"arch": "amd64", "kubernetes.io/os": "linux"},
        pool="static",
    )
    worker = DynamicWorker("build-01", WorkerType.STATIC, config, hostname="build-01.lan")

    assert validate_worker(worker) == []


def test_a_field_violation_reads_as_field_then_description() -> None:
    assert str(FieldViolation("capabilities.cpu_cores", "must be positive")) == (
        "capabilities.cpu_cores: must be positive"
    )


CPU_ZERO = FieldViolation("capabilities.cpu_cores", "must be between 1 and 4096, got 0")


def test_a_frozen_value_carries_its_verdict_and_a_replaced_one_finds_its_own() -> None:
    config = DynamicWorkerConfig(cpu_cores=0)
    worker = DynamicWorker("w-1", WorkerType.DOCKER, config)
    record = record_of(worker, registered_at=datetime(2026, 1, 1, tzinfo=UTC))

    assert config.verdict == (CPU_ZERO,) and config.verdict is config.verdict
    assert worker.verdict == tuple(worker.violations()) == (CPU_ZERO,)
    assert record.verdict == tuple(record.violations()) == (CPU_ZERO,)
    assert dataclasses.replace(config, cpu_cores=2).verdict == ()
    assert dataclasses.replace(worker, worker_id="").verdict == (
        FieldViolation("worker_id", "must not be empty"),
        CPU_ZERO,
    )
    assert dataclasses.replace(record, incarnation=-1).verdict == (
        CPU_ZERO,
        FieldViolation("incarnation", f"must be between 0 and {2**63 - 1}, got -1"),
    )
    # The verdict is no field: equality, hashing and the repr ignore it.
    assert config == DynamicWorkerConfig(cpu_cores=0) and hash(config) == hash(
        DynamicWorkerConfig(cpu_cores=0)
    )
    assert "verdict" not in repr(config) + repr(worker) + repr(record)


@pytest.mark.parametrize(
    "fields",
    [
        {"worker_id": "w-1", "hostname": "", "agent_version": "", "incarnation": 0},
        {"worker_id": "", "hostname": "-host", "agent_version": "1.0 beta", "incarnation": -1},
    ],
    ids=["valid", "every own field invalid"],
)
@pytest.mark.parametrize(
    "shape",
    [DynamicWorkerConfig(labels={"zone": "a"}), DynamicWorkerConfig(cpu_cores=0, labels={"": "a"}, pool="-")],
    ids=["valid shape", "invalid shape"],
)
def test_a_record_made_in_a_shape_has_the_verdict_its_fields_have(
    shape: DynamicWorkerConfig, fields: dict[str, object]
) -> None:
    made = record_in_shape(
        shape,
        shape.capabilities,
        registered_at=datetime(2026, 1, 1, tzinfo=UTC),
        **fields,  # type: ignore[arg-type]
    )

    assert made.verdict == tuple(validate_record(dataclasses.replace(made)))


def test_a_records_size_counts_each_text_in_utf8_bytes() -> None:
    def sized(text: str) -> int:
        return wire_size(
            WorkerRecord(
                worker_id=f"w{text}",
                worker_type=WorkerType.DOCKER,
                capabilities=WorkerCapabilities(1, 512),
                pool=f"p{text}",
                hostname=f"h{text}",
                agent_version=f"v{text}",
            )
        )

    # "é" is 2 bytes, "€" 3 and "😀" 4, against 1 for "e", in each of the four texts.
    assert sized("é") - sized("e") == 4
    assert sized("€") - sized("e") == 8
    assert sized("😀") - sized("e") == 12


BOUND = Assignment(
    assignment_id="as-1",
    job_id="job-1",
    worker_id="w-1",
    incarnation=0,
    trace_context={"traceparent": "00-1"},
)


@pytest.mark.parametrize(
    "with_text",
    [
        pytest.param(lambda text: dataclasses.replace(BOUND, assignment_id=text), id="assignment_id"),
        pytest.param(lambda text: dataclasses.replace(BOUND, job_id=text), id="job_id"),
        pytest.param(lambda text: dataclasses.replace(BOUND, worker_id=text), id="worker_id"),
        pytest.param(lambda text: dataclasses.replace(BOUND, trace_context={text: "00-1"}), id="trace key"),
        pytest.param(
            lambda text: dataclasses.replace(BOUND, trace_context={"traceparent": text}), id="trace value"
        ),
    ],
)
def test_a_bound_records_size_counts_each_text_of_its_assignment_in_utf8_bytes(
    with_text: Callable[[str], Assignment],
) -> None:
    def bound_to(text: str) -> int:
        return wire_size(
            WorkerRecord(
                worker_id="w-1",
                worker_type=WorkerType.DOCKER,
                capabilities=WorkerCapabilities(1, 512),
                assignment=with_text(text),
            )
        )

    # 100 characters of 1, 2, 3 and 4 bytes.
    assert bound_to("é" * 100) - bound_to("e" * 100) == 100
    assert bound_to("€" * 100) - bound_to("e" * 100) == 200
    assert bound_to("😀" * 100) - bound_to("e" * 100) == 300
