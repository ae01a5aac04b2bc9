"""The public API: exactly these names, each importable. A change here is a change to what users may rely on."""

from __future__ import annotations

import importlib

import pytest

HODEI_NAMES = [
    "AccessDenied",
    "BatchRegistrationResult",
    "DecommissionResult",
    "DynamicWorker",
    "DynamicWorkerConfig",
    "ErrorCode",
    "FieldViolation",
    "HodeiError",
    "InvalidWorkerData",
    "MaxRetriesExceeded",
    "ProviderError",
    "ProvisionResult",
    "ProvisioningError",
    "RegistrationCancelled",
    "RegistrationConfig",
    "RegistrationError",
    "RegistrationFailed",
    "RegistrationReceipt",
    "RegistryStore",
    "SchedulerConflict",
    "SchedulerError",
    "SchedulerInternalError",
    "SchedulerOverloaded",
    "SchedulerPort",
    "SchedulerPortClient",
    "SchedulerTimeout",
    "SchedulerUnavailable",
    "StaleIncarnation",
    "StaticWorkerFileError",
    "StoreError",
    "StoreRefusedData",
    "StoreUnavailable",
    "UnregistrationStatus",
    "WorkerAlreadyExists",
    "WorkerCapabilities",
    "WorkerFilter",
    "WorkerManagementConfig",
    "WorkerManagementService",
    "WorkerNotFound",
    "WorkerPage",
    "WorkerProvider",
    "WorkerRecord",
    "WorkerRegistrationAdapter",
    "WorkerStatus",
    "WorkerType",
    "__version__",
    "load_static_workers",
    "static_worker",
]

TESTING_NAMES = [
    "EmbeddedScheduler",
    "FailingScheduler",
    "FakeClock",
    "FaultProxy",
    "FaultyStore",
    "MockWorkerProvider",
    "REGISTRATION_METHODS",
]


@pytest.mark.parametrize(
    ("module_name", "expected"), [("hodei", HODEI_NAMES), ("hodei.testing", TESTING_NAMES)]
)
def test_the_exported_names_are_exactly_the_pinned_ones(module_name: str, expected: list[str]) -> None:
    exported = importlib.import_module(module_name).__all__

    assert sorted(exported) == expected
    assert len(set(exported)) == len(exported)


@pytest.mark.parametrize(
    ("module_name", "name"),
    [("hodei", name) for name in HODEI_NAMES] + [("hodei.testing", name) for name in TESTING_NAMES],
)
def test_every_exported_name_is_importable(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)

    assert getattr(module, name) is not None


def test_the_names_of_the_story_import_from_hodei() -> None:
    from hodei import (
        DynamicWorker,
        DynamicWorkerConfig,
        MaxRetriesExceeded,
        RegistrationConfig,
        RegistrationError,
        SchedulerPortClient,
        WorkerManagementConfig,
        WorkerManagementService,
        WorkerRegistrationAdapter,
        WorkerStatus,
        WorkerType,
    )

    assert [
        DynamicWorker.__name__,
        DynamicWorkerConfig.__name__,
        WorkerType.__name__,
        WorkerStatus.__name__,
        RegistrationConfig.__name__,
        WorkerRegistrationAdapter.__name__,
        RegistrationError.__name__,
        MaxRetriesExceeded.__name__,
        SchedulerPortClient.__name__,
        WorkerManagementService.__name__,
        WorkerManagementConfig.__name__,
    ] == [
        "DynamicWorker",
        "DynamicWorkerConfig",
        "WorkerType",
        "WorkerStatus",
        "RegistrationConfig",
        "WorkerRegistrationAdapter",
        "RegistrationError",
        "MaxRetriesExceeded",
        "SchedulerPortClient",
        "WorkerManagementService",
        "WorkerManagementConfig",
    ]
    assert issubclass(MaxRetriesExceeded, RegistrationError)


def test_the_test_doubles_import_from_hodei_testing() -> None:
    from hodei.testing import EmbeddedScheduler, FailingScheduler, MockWorkerProvider

    assert [EmbeddedScheduler.__name__, FailingScheduler.__name__, MockWorkerProvider.__name__] == [
        "EmbeddedScheduler",
        "FailingScheduler",
        "MockWorkerProvider",
    ]


def test_the_version_is_a_string() -> None:
    import hodei

    assert isinstance(hodei.__version__, str)
    assert hodei.__version__ == "0.1.0"
