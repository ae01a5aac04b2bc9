"""Static workers declared in a TOML file: what a good file gives, and how a bad one is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerStatus, WorkerType
from hodei.management._static import StaticWorkerFileError, load_static_workers, static_worker

GOOD_FILE = """
[[workers]]
id = "build-01"
cpu_cores = 8
memory_mb = 16384
pool = "builders"
hostname = "build-01.lan"
labels = { arch = "amd64", os = "linux" }

[[workers]]
id = "build-02"
cpu_cores = 4
memory_mb = 8192
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workers.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(StaticWorkerFileError) as caught:
        load_static_workers(write(tmp_path, text))
    return str(caught.value)


def test_a_good_file_gives_static_workers_with_every_declared_field(tmp_path: Path) -> None:
    workers = load_static_workers(write(tmp_path, GOOD_FILE))

    assert workers == [
        DynamicWorker(
            "build-01",
            WorkerType.STATIC,
            DynamicWorkerConfig(
                worker_type=WorkerType.STATIC,
                cpu_cores=8,
                memory_mb=16384,
                labels={"arch": "amd64", "os": "linux"},
                pool="builders",
            ),
            hostname="build-01.lan",
        ),
        DynamicWorker(
            "build-02",
            WorkerType.STATIC,
            DynamicWorkerConfig(worker_type=WorkerType.STATIC, cpu_cores=4, memory_mb=8192, pool="static"),
        ),
    ]
    assert all(worker.status is WorkerStatus.PROVISIONING for worker in workers)
    assert all(worker.violations() == [] for worker in workers)


def test_a_path_given_as_a_string_is_read_too(tmp_path: Path) -> None:
    workers = load_static_workers(str(write(tmp_path, GOOD_FILE)))

    assert [worker.worker_id for worker in workers] == ["build-01", "build-02"]


def test_a_file_without_workers_declares_none(tmp_path: Path) -> None:
    assert load_static_workers(write(tmp_path, "# nothing here yet\n")) == []


def test_static_worker_builds_the_same_worker_as_the_file(tmp_path: Path) -> None:
    [from_file, _] = load_static_workers(write(tmp_path, GOOD_FILE))

    built = static_worker(
        "build-01",
        cpu_cores=8,
        memory_mb=16384,
        labels={"arch": "amd64", "os": "linux"},
        pool="builders",
        hostname="build-01.lan",
    )

    assert built == from_file


@pytest.mark.parametrize("key", ["id", "cpu_cores", "memory_mb"])
def test_a_missing_required_key_is_reported_with_its_entry(tmp_path: Path, key: str) -> None:
    entry = {"id": '"build-02"', "cpu_cores": "4", "memory_mb": "8192"}
    del entry[key]
    body = "\n".join(f"{name} = {value}" for name, value in entry.items())
    text = f'[[workers]]\nid = "build-01"\ncpu_cores = 8\nmemory_mb = 16384\n\n[[workers]]\n{body}\n'

    assert load_error(tmp_path, text) == f"workers[1]: missing key {key!r}"


def test_an_unknown_key_is_reported_with_its_entry(tmp_path: Path) -> None:
    text = '[[workers]]\nid = "build-01"\ncpu_cores = 8\nmemory_mb = 16384\ncpus = 8\nzone = "a"\n'

    assert load_error(tmp_path, text) == "workers[0]: unknown key(s) cpus, zone"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("id", "42"),
        ("cpu_cores", '"8"'),
        ("cpu_cores", "8.0"),
        ("cpu_cores", "true"),
        ("memory_mb", "false"),
        ("memory_mb", "[16384]"),
        ("labels", '"arch=amd64"'),
        ("pool", "1"),
        ("hostname", "{ name = 'h' }"),
    ],
)
def test_a_value_of_the_wrong_type_is_reported_with_its_entry_and_key(
    tmp_path: Path, key: str, value: str
) -> None:
    entry = {"id": '"build-01"', "cpu_cores": "8", "memory_mb": "16384", key: value}
    body = "\n".join(f"{name} = {text}" for name, text in entry.items())

    message = load_error(tmp_path, f"[[workers]]\n{body}\n")

    assert message.startswith(f"workers[0].{key} must be a")


@pytest.mark.parametrize("value", ["true", "8", "{ zone = 'a' }", "[1, 2]"])
def test_a_label_value_that_is_not_a_string_is_reported_with_its_entry_and_key(
    tmp_path: Path, value: str
) -> None:
    text = f'[[workers]]\nid = "build-01"\ncpu_cores = 8\nmemory_mb = 16384\nlabels = {{ gpu = {value} }}\n'

    message = load_error(tmp_path, text)

    assert message.startswith("workers[0].labels")
    assert "gpu" in message


def test_an_entry_that_is_not_a_table_is_reported_with_its_position(tmp_path: Path) -> None:
    assert load_error(tmp_path, 'workers = [{ id = "a", cpu_cores = 1, memory_mb = 1 }, "b"]\n') == (
        "workers[1] must be a table"
    )


@pytest.mark.parametrize("text", ['workers = "build-01"\n', "[workers]\nid = 'build-01'\n", "workers = 3\n"])
def test_workers_that_is_not_an_array_of_tables_is_reported(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(StaticWorkerFileError) as caught:
        load_static_workers(path)

    assert str(caught.value) == f"{path}: 'workers' must be an array of tables ([[workers]])"


def test_invalid_toml_is_reported_with_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[[workers]]\nid = "build-01"\ncpu_cores = = 8\n')

    with pytest.raises(StaticWorkerFileError) as caught:
        load_static_workers(path)

    assert str(caught.value).startswith(f"{path}: ")
    assert "line 3" in str(caught.value)
    assert caught.value.__cause__ is not None


def test_a_static_worker_file_error_is_a_value_error() -> None:
    assert issubclass(StaticWorkerFileError, ValueError)
