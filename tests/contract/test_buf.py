"""The contract checked by buf: STANDARD lint rules, and no FILE-level breaking change against the baseline.

buf is the npm package @bufbuild/buf at the version tools/buf/package-lock.json pins, installed into
tools/buf/node_modules by tools/ensure-buf.sh (``make system-deps``). The negative tests break a copy of proto/
in a temporary directory and check that buf refuses it, naming the rule: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from hodei._infra.fixtures import skip_or_fail_for_missing

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
LOCK = ROOT / "tools" / "buf" / "package-lock.json"
BASELINE = ROOT / "proto" / "baseline" / "hodei-scheduler-v1.binpb"
PROTO_FILE = Path("proto") / "hodei" / "scheduler" / "v1" / "scheduler.proto"


@pytest.fixture(scope="module")
def buf() -> Path:
    """The buf program, or a skip (a failure under CI=true) that says what is missing."""
    if shutil.which("node") is None:
        skip_or_fail_for_missing("buf is needed, and node (which runs npm's buf) is not on PATH; install npm")
    if not BUF.exists():
        skip_or_fail_for_missing(
            f"buf is needed: {BUF.relative_to(ROOT)} is missing; run `sh tools/ensure-buf.sh` "
            "(or `make system-deps`), which needs npm"
        )
    return BUF


def run_buf(buf: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def rules_named(output: str) -> set[str]:
    """The rule ids in buf's --error-format=json output (one JSON object per line)."""
    return {json.loads(line)["type"] for line in output.splitlines() if line.strip()}


def copy_of_contract(tmp_path: Path) -> Path:
    """buf.yaml and proto/ (without the baseline) copied to ``tmp_path``, to be edited by a test."""
    shutil.copy2(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("baseline"))
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur exactly once in {path}"
    path.write_text(text.replace(old, new))


def test_buf_is_the_version_the_lock_file_pins(buf: Path) -> None:
    pinned = json.loads(LOCK.read_text())["packages"]["node_modules/@bufbuild/buf"]["version"]

    result = run_buf(buf, "--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == pinned


def test_ensure_buf_is_quiet_when_buf_is_installed(buf: Path) -> None:
    result = subprocess.run(
        ["sh", str(ROOT / "tools" / "ensure-buf.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_lint_passes_with_the_standard_rules(buf: Path) -> None:
    result = run_buf(buf, "lint", "--error-format=json")

    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def test_lint_checks_exactly_the_contract_files(buf: Path) -> None:
    result = run_buf(buf, "ls-files")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [PROTO_FILE.as_posix()]


def test_no_breaking_change_against_the_released_baseline(buf: Path) -> None:
    result = run_buf(buf, "breaking", "--against", str(BASELINE), "--error-format=json")

    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def delete_incarnation_from_register_worker_request(proto: Path) -> None:
    edit(
        proto,
        "  WorkerCapabilities capabilities = 2;\n  WorkerMetadata metadata = 3;\n"
        '  // Bumped by the worker each time it (re)starts; 0 means "not fenced".\n'
        "  uint64 incarnation = 4;\n",
        "  WorkerCapabilities capabilities = 2;\n  WorkerMetadata metadata = 3;\n",
    )


def rename_register_workers_rpc(proto: Path) -> None:
    edit(
        proto,
        "rpc RegisterWorkers(RegisterWorkersRequest)",
        "rpc RegisterWorkerBatch(RegisterWorkersRequest)",
    )


def renumber_worker_id_field(proto: Path) -> None:
    edit(
        proto,
        "message GetWorkerRequest {\n  string worker_id = 1;",
        "message GetWorkerRequest {\n  string worker_id = 2;",
    )


def rename_a_field_keeping_its_number(proto: Path) -> None:
    # Wire-compatible, but a rename breaks generated code (Python keyword arguments and attributes) and JSON.
    edit(proto, "  bool drained = 10;", "  bool is_drained = 10;")


def move_a_message_to_its_own_file(proto: Path) -> None:
    # Wire- and JSON-compatible (same package, same names), but it breaks the Python users of
    # scheduler_pb2.ResourceUsage: only the FILE rule set sees it.
    block = (
        "// ResourceUsage is what an agent reports with each heartbeat.\nmessage ResourceUsage {\n"
        "  double cpu_percent = 1;\n  int64 memory_used_mb = 2;\n  int32 running_jobs = 3;\n}\n"
    )
    edit(proto, block, "")
    edit(
        proto,
        'import "google/protobuf/timestamp.proto";',
        'import "google/protobuf/timestamp.proto";\nimport "hodei/scheduler/v1/usage.proto";',
    )
    (proto.parent / "usage.proto").write_text('syntax = "proto3";\n\npackage hodei.scheduler.v1;\n\n' + block)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (delete_incarnation_from_register_worker_request, "FIELD_NO_DELETE"),
        (rename_register_workers_rpc, "RPC_NO_DELETE"),
        (renumber_worker_id_field, "FIELD_NO_DELETE"),
        (rename_a_field_keeping_its_number, "FIELD_SAME_NAME"),
        (move_a_message_to_its_own_file, "MESSAGE_NO_DELETE"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_breaking_change_is_refused_naming_the_rule(
    buf: Path, tmp_path: Path, change: Callable[[Path], None], rule: str
) -> None:
    contract = copy_of_contract(tmp_path)
    change(contract / PROTO_FILE)
    assert run_buf(buf, "build", "-o", os.devnull, cwd=contract).returncode == 0, "the edit must compile"

    result = run_buf(buf, "breaking", "--against", str(BASELINE), "--error-format=json", cwd=contract)

    assert result.returncode != 0
    assert rule in rules_named(result.stdout), result.stdout + result.stderr


def add_enum_without_unspecified_zero_value(proto: Path) -> None:
    proto.write_text(
        proto.read_text() + "\nenum PoolKind {\n  POOL_KIND_STATIC = 0;\n  POOL_KIND_DYNAMIC = 1;\n}\n"
    )


def add_rpc_with_a_bare_request_type(proto: Path) -> None:
    edit(
        proto,
        "service SchedulerService {\n",
        "service SchedulerService {\n  rpc PingWorker(GetWorkerRequest) returns (GetWorkerResponse);\n",
    )


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (add_enum_without_unspecified_zero_value, "ENUM_ZERO_VALUE_SUFFIX"),
        (add_rpc_with_a_bare_request_type, "RPC_REQUEST_STANDARD_NAME"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_lint_violation_is_refused_naming_the_rule(
    buf: Path, tmp_path: Path, change: Callable[[Path], None], rule: str
) -> None:
    contract = copy_of_contract(tmp_path)
    change(contract / PROTO_FILE)

    result = run_buf(buf, "lint", "--error-format=json", cwd=contract)

    assert result.returncode != 0
    assert rule in rules_named(result.stdout), result.stdout + result.stderr
