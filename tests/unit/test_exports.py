"""The public faces: each public package exports exactly these names, each defined, and every type its public
classes and functions take or return is exported by some face. A change here is a change to what users may rely
on. The modules with a leading underscore are not an API."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

FACES: dict[str, list[str]] = {
    "hodei": [
        "AccessDenied",
        "Acquired",
        "Assignment",
        "AssignmentView",
        "BatchRegistrationResult",
        "DecommissionResult",
        "DrainOutcome",
        "DrainResult",
        "DynamicWorker",
        "DynamicWorkerConfig",
        "ErrorCode",
        "FieldViolation",
        "HodeiError",
        "InvalidWorkerData",
        "Job",
        "JobAlreadyBound",
        "JobOutcome",
        "JobResult",
        "MaxRetriesExceeded",
        "NoWorkerFits",
        "OpenedStore",
        "PoolPort",
        "ProviderError",
        "ProvisionResult",
        "ProvisioningError",
        "RegistrationCancelled",
        "RegistrationConfig",
        "RegistrationError",
        "RegistrationFailed",
        "RegistrationReceipt",
        "RegistryStore",
        "ResourceUsage",
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
        "UpsertOutcome",
        "WorkerAlreadyExists",
        "WorkerCapabilities",
        "WorkerEvent",
        "WorkerEventKind",
        "WorkerFilter",
        "WorkerManagementConfig",
        "WorkerManagementService",
        "WorkerNotFound",
        "WorkerNotIdle",
        "WorkerPage",
        "WorkerProvider",
        "WorkerRecord",
        "WorkerRegistrationAdapter",
        "WorkerStatus",
        "WorkerType",
        "__version__",
        "build_control_plane",
        "build_scheduler",
        "load_static_workers",
        "open_store",
        "static_worker",
    ],
    "hodei.agent": [
        "AgentConfig",
        "AgentRefused",
        "SharedChannels",
        "SharedChannelsLike",
        "WorkerAgent",
        "run_slots",
        "slot_ids",
    ],
    "hodei.registration": [
        "BatchRegistrationResult",
        "DrainResult",
        "RegistrationConfig",
        "WorkerRegistrationAdapter",
    ],
    "hodei.management": [
        "DecommissionResult",
        "PoolAutoscaler",
        "PoolAutoscalerConfig",
        "PoolTick",
        "PoolsFile",
        "ProvisionResult",
        "ReconcileReport",
        "Reconciler",
        "ReconcilerConfig",
        "StaticWorkerFileError",
        "WorkerManagementConfig",
        "WorkerManagementService",
        "load_static_workers",
        "static_worker",
    ],
    "hodei.pools": [
        "IdleWorker",
        "PoolFileError",
        "PoolKind",
        "PoolObservation",
        "PoolSpec",
        "PoolStatus",
        "Requirements",
        "ScaleEvent",
        "ScalePlan",
        "ScaleReason",
        "Waiter",
        "WaitingDemand",
        "WorkerTemplate",
        "best_fit",
        "load_pools",
        "match",
        "parse_pools",
        "plan_scale",
        "waiting_by_pool",
    ],
    "hodei.providers": [
        "DockerProvider",
        "DockerProviderConfig",
        "ProcessProvider",
    ],
    "hodei.stores": [
        "MemoryRegistryStore",
        "PostgresEventRelay",
        "PostgresLeadership",
        "PostgresRegistryStore",
        "SharedLeases",
        "SpentTokens",
        "SqliteRegistryStore",
        "TouchedLeases",
    ],
    "hodei.transport": [
        "Credential",
        "SchedulerPortClient",
        "open_channel",
    ],
    "hodei.security": [
        "AUTHORIZATION",
        "AccessPolicy",
        "AuthError",
        "AuthFailure",
        "Claims",
        "ClientTlsConfig",
        "DEFAULT_LEEWAY",
        "DEFAULT_OPERATOR_TOKEN_TTL",
        "DEFAULT_VALIDITY",
        "DEFAULT_WORKER_CREDENTIAL_TTL",
        "Grant",
        "JoinClaims",
        "JoinTokens",
        "JtiLedger",
        "MAX_TOKEN_LENGTH",
        "MIN_SECRET_BYTES",
        "MemoryJtiLedger",
        "OperatorClaims",
        "PemPair",
        "PermissionDenied",
        "SchedulerSecurity",
        "TestPki",
        "TlsConfig",
        "TokenAuthority",
        "TokenKey",
        "TokenKind",
        "Unauthenticated",
        "WorkerClaims",
        "authorization_metadata",
        "bearer_token",
        "channel_credentials",
        "generate_secret",
        "issue_certificate",
        "load_key",
        "make_ca",
        "server_credentials",
        "ssl_context_for_http",
        "write_test_pki",
    ],
    "hodei.observability": [
        "AgentMetrics",
        "ControlPlaneMetrics",
        "LogFormat",
        "MetricsEndpoint",
        "SchedulerMetrics",
        "configure_logging",
        "configure_tracing",
        "process_registry",
    ],
    "hodei.scheduler": [
        "AgentSession",
        "CommandKind",
        "CommandQueue",
        "DrainOutcome",
        "EventHub",
        "EventRelay",
        "Leadership",
        "LivenessConfig",
        "Relayed",
        "RelayedAck",
        "RelayedCommand",
        "RelayedEvent",
        "Scheduler",
        "SoleLeader",
        "Watcher",
        "WatcherFellBehind",
        "WorkerCommand",
        "WorkerEvent",
        "WorkerEventKind",
        "WorkerRegistry",
    ],
    "hodei.server": [
        "HelloBound",
        "MethodInterceptor",
        "RegistrationBound",
        "SchedulerServer",
        "ServerLimits",
        "StreamLimits",
    ],
    "hodei.testing": [
        "EmbeddedScheduler",
        "FailingScheduler",
        "FakeClock",
        "FaultProxy",
        "FaultyStore",
        "MockWorkerProvider",
        "REGISTRATION_METHODS",
    ],
}
HODEI_NAMES = FACES["hodei"]
TESTING_NAMES = FACES["hodei.testing"]


@pytest.mark.parametrize("package", sorted(FACES))
def test_each_face_exports_exactly_the_pinned_names(package: str) -> None:
    exported = importlib.import_module(package).__all__

    assert sorted(exported) == FACES[package]
    assert len(set(exported)) == len(exported)


@pytest.mark.parametrize(
    ("package", "name"), [(package, name) for package in FACES for name in FACES[package]]
)
def test_every_exported_name_is_defined(package: str, name: str) -> None:
    module = importlib.import_module(package)

    assert getattr(module, name) is not None


def _module_level_imports(tree: ast.Module) -> Iterator[ast.ImportFrom]:
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):  # if TYPE_CHECKING:
            yield from (inner for inner in node.body if isinstance(inner, ast.ImportFrom))


@pytest.mark.parametrize("package", sorted(FACES))
def test_no_face_re_exports_a_private_name(package: str) -> None:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())

    private = [
        f"{node.module}.{alias.name}"
        for node in _module_level_imports(tree)
        for alias in node.names
        if alias.name.startswith("_") or (alias.asname or "").startswith("_")
    ]

    assert private == []
    assert [name for name in importlib.import_module(package).__all__ if name.startswith("_")] == (
        ["__version__"] if package == "hodei" else []
    )


@functools.cache
def _namespace_of(module_name: str) -> dict[str, object]:
    """The names an annotation in ``module_name`` may use: the module's, and those it imports only for type
    checking (``if TYPE_CHECKING:``; a name that only type stubs define stands for ``Any``)."""
    module = sys.modules[module_name]
    namespace = dict(vars(module))
    if module.__file__ is not None and module.__file__.endswith(".py"):
        with open(module.__file__, encoding="utf-8") as source:
            tree = ast.parse(source.read())
        guards = [
            node
            for node in tree.body
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        ]
        for statement in (statement for guard in guards for statement in guard.body):
            try:
                exec(ast.unparse(statement), namespace)
            except ImportError:
                assert isinstance(statement, ast.ImportFrom)
                namespace.update((alias.asname or alias.name, typing.Any) for alias in statement.names)
    return namespace


def _annotations(member: object) -> Iterator[tuple[object, Callable[..., object]]]:
    function = member.fget if isinstance(member, property) else member
    function = getattr(function, "__func__", function)  # staticmethod, classmethod
    if inspect.isfunction(function):
        for annotation in function.__annotations__.values():
            yield annotation, function


def _hodei_types(annotation: object, namespace: dict[str, object]) -> Iterator[type]:
    if isinstance(annotation, str):
        annotation = eval(annotation, namespace)  # the annotations of hodei's own source
    if isinstance(annotation, type) and annotation.__module__.split(".")[0] == "hodei":
        yield annotation
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and origin.__module__.split(".")[0] == "hodei":
        yield origin
    if origin is not typing.Literal:
        for argument in typing.get_args(annotation):
            yield from _hodei_types(argument, namespace)


def _signature_types(thing: object) -> Iterator[tuple[type, str]]:
    """The hodei types in the public signatures of ``thing`` (a class: its public methods, properties and
    fields, inherited ones too; a function: its own), each with where it was met."""
    if not isinstance(thing, type):
        for annotation, function in _annotations(thing):
            for found in _hodei_types(annotation, _namespace_of(function.__module__)):
                yield found, getattr(thing, "__qualname__", repr(thing))
        return
    for name in dir(thing):
        if name.startswith("_") and name != "__init__":
            continue
        member = inspect.getattr_static(thing, name)
        for annotation, function in _annotations(member):
            for found in _hodei_types(annotation, _namespace_of(function.__module__)):
                yield found, f"{thing.__qualname__}.{name}"
    for klass in thing.__mro__:
        if klass.__module__.split(".")[0] != "hodei":
            continue
        namespace = _namespace_of(klass.__module__)
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if not name.startswith("_"):
                for found in _hodei_types(annotation, namespace):
                    yield found, f"{klass.__qualname__}.{name}"


def test_every_type_a_public_signature_uses_is_exported_by_a_face() -> None:
    faces: list[ModuleType] = [importlib.import_module(package) for package in FACES]
    exported = {id(getattr(face, name)) for face in faces for name in face.__all__}
    pending = [getattr(face, name) for face in faces for name in face.__all__]
    seen = {id(thing) for thing in pending}
    hidden: dict[str, set[str]] = {}
    while pending:
        for found, where in _signature_types(pending.pop()):
            if id(found) not in exported:
                hidden.setdefault(f"{found.__module__}.{found.__qualname__}", set()).add(where)
            if id(found) not in seen:  # a type met in a signature shows its own signatures too
                seen.add(id(found))
                pending.append(found)

    assert hidden == {}


def test_importing_hodei_and_its_test_doubles_imports_neither_docker_nor_asyncpg() -> None:
    probe = (
        "import sys, hodei, hodei.testing, hodei.stores, hodei.providers; "
        "print(sorted(m for m in ('docker', 'asyncpg') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )

    assert loaded.stdout.strip() == "[]"


def test_the_version_is_one_string_for_the_package_its_metadata_and_the_command() -> None:
    import hodei

    command = subprocess.run(
        [sys.executable, "-m", "hodei", "version"], capture_output=True, text=True, check=True, timeout=60
    )

    assert command.stdout.strip() == hodei.__version__ == importlib.metadata.version("hodei")


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
