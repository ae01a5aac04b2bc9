"""The private Podman service of ``hodei.testing``, the worker image built for it, and the plugin's fixtures.

The session's service and image come from the ``podman_service`` and ``agent_image`` fixtures; the tests of
start and stop start their own. Without Podman (or mmdebstrap, or root) these tests are skipped (failed under
CI=true). The first use of ``agent_image`` builds the image's root filesystem when it is not cached: seconds
when only hodei's sources changed, about a minute when its base (Debian and the dependencies) is made too,
hence the timeout.
"""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

import hodei
from hodei._infra._leftovers import mount_points_under, processes_naming
from hodei._infra.agent_image import (
    AGENT_IMAGE_ENTRYPOINT,
    AGENT_IMAGE_ENV,
    AGENT_IMAGE_REPOSITORY,
    agent_base_key,
    agent_image_tag,
    ensure_agent_image,
)
from hodei._infra.fixtures import skip_or_fail_for_missing
from hodei._infra.podman import PodmanService, PodmanServiceError, missing_podman

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def podman_installed() -> None:
    missing = missing_podman()
    if missing is not None:
        skip_or_fail_for_missing(f"Podman is needed: {missing}")


@pytest.fixture
def client(docker_url: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_url)
    yield client
    client.close()


class RefusingBuilder:
    """A root filesystem builder that records each call and builds nothing: proof that no build happened."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, out_tar: Path, *, project_dir: Path) -> None:
        self.calls.append(out_tar)
        raise AssertionError(f"the root filesystem was built again, into {out_tar}")


class TinyBuilder:
    """Writes a one-file tar (enough for ``podman import``) instead of a Debian root filesystem."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, out_tar: Path, *, project_dir: Path) -> None:
        self.calls.append(out_tar)
        content = project_dir / "src" / "hodei" / "__init__.py"
        with tarfile.open(out_tar, "w") as tar:
            tar.add(content, arcname="hodei-init.py")


def make_project(directory: Path, version: int) -> Path:
    (directory / "src" / "hodei").mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text('[project]\nname = "hodei"\nversion = "0.1.0"\n')
    (directory / "src" / "hodei" / "__init__.py").write_text(f"VERSION = {version}\n")
    return directory


def process_is_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def run_to_completion(client: docker.DockerClient, image: str, entrypoint: list[str]) -> tuple[int, str]:
    container: Container = client.containers.create(image, entrypoint=entrypoint, network_mode="host")
    try:
        container.start()
        status = container.wait(timeout=120)
        return int(status["StatusCode"]), container.logs().decode()
    finally:
        container.remove(force=True)


def test_the_session_service_answers_ping_on_its_own_storage(
    podman_service: PodmanService, client: docker.DockerClient
) -> None:
    assert client.ping() is True
    assert podman_service.url == f"unix://{podman_service.directory}/podman.sock"
    graph_root = podman_service.podman("info", "--format", "{{.Store.GraphRoot}}").stdout.strip()
    assert Path(graph_root) == podman_service.directory / "storage"
    assert podman_service.storage_driver in {"overlay", "vfs"}
    assert podman_service.environment["CONTAINERS_CONF"] == str(podman_service.directory / "containers.conf")
    assert 'runtime = "runc"' in (podman_service.directory / "containers.conf").read_text()
    assert podman_service.log_path.is_file()


def test_a_container_of_the_agent_image_runs_hodei(agent_image: str, client: docker.DockerClient) -> None:
    status, logs = run_to_completion(client, agent_image, ["python3", "-m", "hodei", "--help"])

    assert status == 0, logs
    assert "hodei: workers that auto-register with the scheduler." in logs
    assert "Run the worker agent" in logs


def test_the_agent_image_keeps_the_image_contract(agent_image: str, client: docker.DockerClient) -> None:
    config = client.images.get(agent_image).attrs["Config"]

    assert agent_image.startswith(f"{AGENT_IMAGE_REPOSITORY}:")
    assert config["Entrypoint"] == AGENT_IMAGE_ENTRYPOINT
    assert config["Env"] == [f"{name}={value}" for name, value in AGENT_IMAGE_ENV.items()]


def test_hodei_in_the_image_is_this_source_tree_compiled_ahead(
    agent_image: str, client: docker.DockerClient
) -> None:
    script = (
        "import hodei, importlib.util, sys; "
        "print(hodei.__file__, hodei.__version__, sys.version_info[:2] == (3, 11), "
        "importlib.util.cache_from_source(hodei.__file__))"
    )
    status, logs = run_to_completion(client, agent_image, ["python3", "-c", script])

    assert status == 0, logs
    module_file, version, is_311, cached = logs.split()
    assert module_file == "/opt/hodei/hodei/__init__.py"
    assert version == hodei.__version__
    assert is_311 == "True"
    status, _ = run_to_completion(client, agent_image, ["test", "-f", cached])
    assert status == 0, f"{cached} is not in the image: every container would compile hodei at start"


def test_a_second_ensure_finds_the_image_without_building_it(
    podman_service: PodmanService, agent_image: str
) -> None:
    builder = RefusingBuilder()
    started = time.monotonic()

    assert ensure_agent_image(podman_service, build_rootfs=builder) == agent_image
    assert builder.calls == []
    assert time.monotonic() - started < 10


def test_a_new_service_imports_the_cached_root_filesystem_and_stop_leaves_nothing(
    podman_installed: None, agent_image: str
) -> None:
    builder = RefusingBuilder()
    service = PodmanService().start()
    try:
        assert ensure_agent_image(service, build_rootfs=builder) == agent_image
        assert builder.calls == []
        client = docker.DockerClient(base_url=service.url)
        try:
            sleeper = client.containers.run(
                agent_image,
                entrypoint=["python3", "-c", "import time; time.sleep(3600)"],
                detach=True,
                network_mode="host",
            )
            sleeper.reload()
            assert sleeper.status == "running"
            sleeper_pid = int(sleeper.attrs["State"]["Pid"])
        finally:
            client.close()
        directory, socket_path, service_pid = service.directory, service.socket_path, service.pid
        assert mount_points_under(directory) != []
    finally:
        service.stop()

    assert not socket_path.exists()
    assert process_is_gone(service_pid)
    assert process_is_gone(sleeper_pid)
    assert processes_naming(directory) == []  # conmon, the container's monitor, is gone too
    assert mount_points_under(directory) == []
    assert not directory.exists()


def test_a_service_starts_once_and_stops_idempotently(podman_installed: None) -> None:
    directory = Path(f"/tmp/hodei-podman-test-{os.getpid()}")
    service = PodmanService(directory)
    with service:
        assert service.directory == directory
        client = docker.DockerClient(base_url=service.url)
        assert client.ping() is True
        client.close()
        with pytest.raises(PodmanServiceError, match="started once"):
            service.start()
    service.stop()

    assert not directory.exists()
    with pytest.raises(PodmanServiceError, match="has been stopped"):
        service.podman("ps")


def test_a_service_refuses_a_directory_that_is_not_empty(podman_installed: None, tmp_path: Path) -> None:
    (tmp_path / "something").write_text("")

    with pytest.raises(PodmanServiceError, match="is not empty"):
        PodmanService(tmp_path).start()
    assert (tmp_path / "something").exists()


def test_a_service_refuses_a_directory_too_long_for_its_socket(podman_installed: None) -> None:
    directory = Path("/tmp") / ("d" * 120)

    with pytest.raises(PodmanServiceError, match="too long for a Unix socket"):
        PodmanService(directory).start()
    assert not directory.exists()


def test_a_storage_driver_podman_refuses_fails_the_start_and_leaves_nothing(podman_installed: None) -> None:
    directory = Path(f"/tmp/hodei-podman-test-{os.getpid()}")
    service = PodmanService(directory, storage_driver="no-such-driver")

    with pytest.raises(PodmanServiceError, match="no storage driver works") as refusal:
        service.start()
    assert "no-such-driver was refused" in str(refusal.value)
    assert not directory.exists()


def test_the_image_tag_follows_the_sources_and_not_their_bytecode(tmp_path: Path) -> None:
    project = make_project(tmp_path, version=1)
    first = agent_image_tag(project)
    (project / "src" / "hodei" / "__pycache__").mkdir()
    (project / "src" / "hodei" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")

    assert agent_image_tag(project) == first
    make_project(project, version=2)
    assert agent_image_tag(project) != first
    (project / "src" / "hodei" / "new_module.py").write_text("")
    make_project(project, version=1)
    assert agent_image_tag(project) != first


def test_the_base_follows_the_project_s_dependencies_and_not_its_sources(tmp_path: Path) -> None:
    project = make_project(tmp_path, version=1)
    base, tag = agent_base_key(project), agent_image_tag(project)

    make_project(project, version=2)
    assert (agent_base_key(project), agent_image_tag(project) != tag) == (base, True)
    (project / "pyproject.toml").write_text('[project]\nname = "hodei"\ndependencies = ["grpcio"]\n')
    assert agent_base_key(project) != base


def test_each_new_source_tree_is_built_once_and_the_cache_keeps_the_latest_three(
    podman_service: PodmanService, tmp_path: Path
) -> None:
    builder = TinyBuilder()
    cache = tmp_path / "cache"
    tags = []
    for version in range(1, 5):
        project = make_project(tmp_path / f"project-{version}", version)
        tags.append(
            ensure_agent_image(podman_service, project_dir=project, build_rootfs=builder, cache_dir=cache)
        )
        assert (
            ensure_agent_image(podman_service, project_dir=project, build_rootfs=builder, cache_dir=cache)
            == (tags[-1])
        )

    assert len(set(tags)) == 4
    assert len(builder.calls) == 4
    assert sorted(path.name for path in cache.iterdir()) == sorted(
        f"{tag.rpartition(':')[2]}.tar" for tag in tags[1:]
    )
    for tag in tags:
        podman_service.podman("image", "rm", tag)
