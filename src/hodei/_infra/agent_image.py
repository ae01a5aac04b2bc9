"""The worker image for tests, made on this machine without any image registry.

::

    with PodmanService() as service:
        tag = ensure_agent_image(service)  # localhost/hodei-agent:<hash of the project and the recipe>
        docker.DockerClient(base_url=service.url).containers.run(tag, ...)  # runs `hodei agent`

The recipe: a Debian bookworm root filesystem made by ``mmdebstrap`` from the distribution's packages
(``python3``, ``ca-certificates``, and ``libstdc++6``, which grpcio's wheel needs), without documentation,
manual pages or translations; hodei's runtime dependencies installed into ``/opt/hodei`` by the host's pip,
from binary wheels chosen for bookworm's CPython 3.11 and glibc, at the versions installed here, and compiled by
the image's own Python, so that a container does not compile them at every start. That is the *base*, keyed by
the recipe, ``pyproject.toml`` and the pinned versions only: a change to hodei's sources reuses it, and only
hodei itself (its wheel, installed by pip, compiled by this interpreter when it makes the bytecode the image's
does) is appended to a copy of it — a second or two instead of the base's half a minute. The tar is imported
with ``podman import``, which sets the image contract below (the same as ``deploy/docker/Dockerfile``'s).

The tag is a hash of the base's key and every file under ``src/hodei``, so that a change to hodei makes a new
image. Root filesystems are cached in ``$XDG_CACHE_HOME/hodei/agent-image/`` (default ``~/.cache``), bases in
its ``base/``: a second test session imports the tar (seconds) instead of building it; sessions side by side
build it once (an exclusive lock on ``agent-image.lock`` beside it).
Building needs root, ``mmdebstrap`` and the Debian mirror; :func:`missing_image_builder` says what is missing,
for a skip message.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Protocol

import hodei
from hodei._infra.debian import DPKG_OPTIONS, PACKAGES, SUITE, debootstrap
from hodei._infra.podman import PodmanService

__all__ = [
    "AGENT_IMAGE_ENTRYPOINT",
    "AGENT_IMAGE_ENV",
    "AGENT_IMAGE_REPOSITORY",
    "AGENT_IMAGE_STOPSIGNAL",
    "AGENT_IMAGE_USER",
    "AgentImageError",
    "RootfsBuilder",
    "agent_base_key",
    "agent_image_tag",
    "build_agent_rootfs",
    "ensure_agent_image",
    "find_project_dir",
    "missing_image_builder",
]

AGENT_IMAGE_ENTRYPOINT: Final = ["python3", "-m", "hodei", "agent"]
"""What a container of the worker image runs: ``hodei agent`` (its options come as the container's command)."""
AGENT_IMAGE_ENV: Final = {"PYTHONPATH": "/opt/hodei", "PYTHONUNBUFFERED": "1"}
"""The environment the worker image sets: where hodei is installed, and logs written as they happen."""
AGENT_IMAGE_USER: Final = "65532:65532"
"""The worker image runs the agent as an unprivileged user (it needs no file of its own)."""
AGENT_IMAGE_STOPSIGNAL: Final = "SIGTERM"
"""What ``docker stop`` sends: the agent drains, unregisters and exits on it."""
AGENT_IMAGE_REPOSITORY: Final = "localhost/hodei-agent"

RECIPE_VERSION: Final = 1
"""Raised whenever the recipe changes in a way the hash of its parameters below does not see."""
# What pip installs must run on bookworm's interpreter, whatever the host's: CPython 3.11, glibc 2.36.
_TARGET_PYTHON = ("3.11", "cp", "cp311")
_TARGET_GLIBC_MINOR = 36
_TARGET_CACHE_TAG = "cpython-311"  # this interpreter's bytecode is the image's when its cache tag is this
_PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input")
_CACHED_ROOTFS_KEPT = 3
_CACHED_BASES_KEPT = 2
_PIP_TIMEOUT = 900
_MMDEBSTRAP_TIMEOUT = 1800
_OUTPUT_TAIL_LINES = 40

_tags_taken: dict[Path, str] = {}
"""The tag :func:`ensure_agent_image` took for each project directory, in this process."""


class AgentImageError(RuntimeError):
    """The image could not be built or imported; ``output_tail`` is the end of what the failing tool printed."""

    def __init__(self, message: str, *, output_tail: str = "") -> None:
        super().__init__(f"{message}\n--- output (tail) ---\n{output_tail}" if output_tail else message)
        self.output_tail = output_tail


class RootfsBuilder(Protocol):
    """Writes the image's root filesystem as a tar to ``out_tar``; :func:`build_agent_rootfs` is the real one."""

    def __call__(self, out_tar: Path, *, project_dir: Path) -> None: ...


def missing_image_builder() -> str | None:
    """What keeps :func:`build_agent_rootfs` from working here, in words for a skip message; None if nothing."""
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap not found; install Debian's mmdebstrap package (tools/ensure-podman.sh does it as root)"
    if os.geteuid() != 0:
        return "not root: mmdebstrap --mode=root builds the agent image's root filesystem"
    if importlib.util.find_spec("pip") is None:
        return f"pip is not installed for {sys.executable}, which installs hodei into the agent image"
    return None


def find_project_dir() -> Path:
    """The source tree the imported ``hodei`` comes from: the directory above it that holds its pyproject.toml.

    Raises :class:`AgentImageError` when there is none (hodei installed from a wheel).
    """
    package_dir = Path(hodei.__file__).resolve().parent
    for candidate in package_dir.parents:
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and _project_name(pyproject) == "hodei":
            return candidate
    raise AgentImageError(
        f"hodei is imported from {package_dir}, which is not in a source tree with hodei's pyproject.toml "
        "(installed from a wheel?); pass project_dir= the hodei repository"
    )


def agent_image_tag(project_dir: Path) -> str:
    """``localhost/hodei-agent:<hash>``: the hash of the base's key (:func:`agent_base_key`) and the sources."""
    digest = hashlib.sha256(agent_base_key(project_dir).encode())
    for path in _source_files(project_dir):
        content = path.read_bytes()
        digest.update(f"\0{path.relative_to(project_dir).as_posix()}\0{len(content)}\0".encode() + content)
    return f"{AGENT_IMAGE_REPOSITORY}:{digest.hexdigest()[:16]}"


def agent_base_key(project_dir: Path) -> str:
    """What the base root filesystem (everything but hodei itself) is made of, hashed: the recipe, the
    project's ``pyproject.toml`` and the versions pinned here; not hodei's sources."""
    digest = hashlib.sha256()
    recipe = {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "packages": PACKAGES,
        "dpkg": DPKG_OPTIONS,
        "python": _TARGET_PYTHON,
        "pins": _pinned_versions(),
        "entrypoint": AGENT_IMAGE_ENTRYPOINT,
        "env": AGENT_IMAGE_ENV,
        "user": AGENT_IMAGE_USER,
        "stopsignal": AGENT_IMAGE_STOPSIGNAL,
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    digest.update(b"\0pyproject.toml\0" + (project_dir / "pyproject.toml").read_bytes())
    return digest.hexdigest()[:16]


def build_agent_rootfs(out_tar: Path, *, project_dir: Path) -> None:
    """Build the worker image's root filesystem from ``project_dir`` (hodei's repository) into ``out_tar``:
    hodei appended to a copy of the base, which is built first when ``out_tar``'s directory has none in its
    ``base/`` for :func:`agent_base_key`. Where this interpreter's bytecode is not the image's, the whole root
    filesystem is built at once instead.

    Each tar is written to a temporary name and renamed when complete. Raises :class:`AgentImageError` with the
    tail of the failing tool's output.
    """
    missing = missing_image_builder()
    if missing is not None:
        raise AgentImageError(f"cannot build the agent image: {missing}")
    out_tar = out_tar.absolute()
    out_tar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hodei-agent-rootfs-") as work_name:
        work = Path(work_name)
        package = _install_hodei(project_dir, work)
        if sys.implementation.cache_tag != _TARGET_CACHE_TAG:
            sites = [_install_dependencies(project_dir, work), package]
            _written(out_tar, lambda partial: _debootstrap(sites, partial))
            return
        base = out_tar.parent / "base" / f"{agent_base_key(project_dir)}.tar"
        if base.is_file():
            os.utime(base)  # most recently used: the last to be pruned
        else:
            base.parent.mkdir(exist_ok=True)
            dependencies = _install_dependencies(project_dir, work)
            _written(base, lambda partial: _debootstrap([dependencies], partial))
            _prune_cache(base.parent, keep=base, kept=_CACHED_BASES_KEPT)
        # In this process, one file after another (hodei's own modules, about a second): with workers, compileall
        # forks a process pool from a process that may run threads (a pytest worker's), and a forked child once
        # spun forever on a lock it inherited held.
        compileall.compile_dir(package, quiet=1, workers=1)
        _written(out_tar, lambda partial: _append_to_copy(base, package, partial))


def ensure_agent_image(
    service: PodmanService,
    *,
    project_dir: Path | None = None,
    build_rootfs: RootfsBuilder = build_agent_rootfs,
    cache_dir: Path | None = None,
) -> str:
    """The tag of the worker image for ``project_dir`` (default: :func:`find_project_dir`) in ``service``'s
    storage, importing it first if it is not there, and building its root filesystem first if it is not cached.

    ``build_rootfs`` makes the tar when the cache (``cache_dir``, default ``$XDG_CACHE_HOME/hodei/agent-image``)
    does not hold it; the cache keeps the few most recently used ones. The tag of a project directory is taken
    once per process: sources edited while the tests run (they run the modules imported at the start) do not
    make a second image.
    """
    project_dir = (find_project_dir() if project_dir is None else project_dir).resolve()
    if project_dir not in _tags_taken:
        _tags_taken[project_dir] = agent_image_tag(project_dir)
    tag = _tags_taken[project_dir]
    if service.podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    cache = _default_cache_dir() if cache_dir is None else cache_dir
    rootfs = cache / f"{tag.rpartition(':')[2]}.tar"
    cache.mkdir(parents=True, exist_ok=True)
    # Test sessions side by side (xdist workers, two checkouts) share the cache: one builds, the others wait.
    with _locked(cache.with_name(f"{cache.name}.lock")):
        if rootfs.is_file():
            os.utime(rootfs)  # most recently used: the last to be pruned
        else:
            build_rootfs(rootfs, project_dir=project_dir)
            _prune_cache(cache, keep=rootfs)
    changes = [f"ENTRYPOINT {json.dumps(AGENT_IMAGE_ENTRYPOINT)}"]
    changes += [f"ENV {name}={value}" for name, value in AGENT_IMAGE_ENV.items()]
    changes += [f"USER {AGENT_IMAGE_USER}", f"STOPSIGNAL {AGENT_IMAGE_STOPSIGNAL}"]
    service.podman("import", "--quiet", *(f"--change={change}" for change in changes), str(rootfs), tag)
    return tag


# -- internals


def _project_name(pyproject: Path) -> str | None:
    try:
        name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return name if isinstance(name, str) else None


def _source_files(project_dir: Path) -> Iterator[Path]:
    package_dir = project_dir / "src" / "hodei"
    if not package_dir.is_dir():
        raise AgentImageError(f"{package_dir} is not a directory: {project_dir} is not hodei's repository")
    for path in sorted(package_dir.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}:
            yield path


def _pinned_versions() -> list[str]:
    """``name==version`` of every distribution installed here but hodei: the image gets what the tests run."""
    pins = {
        re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower(): dist.version
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"]
    }
    pins.pop("hodei", None)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hodei" / "agent-image"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block (released by the kernel if the holder dies)."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _prune_cache(cache: Path, *, keep: Path, kept: int = _CACHED_ROOTFS_KEPT) -> None:
    others = sorted(
        (path for path in cache.glob("*.tar") if path != keep), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for stale in others[kept - 1 :]:
        stale.unlink(missing_ok=True)


def _written(out: Path, write: Callable[[Path], None]) -> None:
    """``write`` a file to a temporary name next to ``out``, renamed to ``out`` once complete."""
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        write(partial)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


def _run(command: list[str], *, what: str, timeout: float) -> None:
    try:
        result = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise AgentImageError(f"{what} did not finish within {timeout:g} s: {shlex.join(command)}") from exc
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-_OUTPUT_TAIL_LINES:])
        raise AgentImageError(
            f"{what} exited with status {result.returncode}: {shlex.join(command)}", output_tail=tail
        )


def _install_hodei(project_dir: Path, work: Path) -> Path:
    """hodei alone (its wheel, without dependencies), installed by the host's pip into ``work/hodei``."""
    # The wheel is built from a copy: setuptools writes build/ and *.egg-info/ into the tree it builds.
    source = work / "project"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (project_dir / name).is_file():
            shutil.copy2(project_dir / name, source / name)
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(project_dir / "src" / "hodei", source / "src" / "hodei", ignore=ignored)
    wheels = work / "wheels"
    _run(
        [*_PIP, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        what="pip wheel",
        timeout=_PIP_TIMEOUT,
    )
    return _pip_install(work / "hodei", ["--no-deps", *(str(w) for w in sorted(wheels.glob("hodei-*.whl")))])


def _install_dependencies(project_dir: Path, work: Path) -> Path:
    """hodei's runtime dependencies (``pyproject.toml``'s, at the versions installed here), installed by the
    host's pip for the image's interpreter into ``work/site``."""
    dependencies = tomllib.loads((project_dir / "pyproject.toml").read_text())["project"]["dependencies"]
    constraints = work / "constraints.txt"
    constraints.write_text("\n".join(_pinned_versions()) + "\n")
    python_version, implementation, abi = _TARGET_PYTHON
    arch = platform.machine()
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(_TARGET_GLIBC_MINOR, 16, -1)]
    platforms += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    return _pip_install(
        work / "site",
        [
            "--only-binary=:all:",
            *("--python-version", python_version, "--implementation", implementation, "--abi", abi),
            *(f"--platform={tag}" for tag in platforms),
            *("--constraint", str(constraints)),
            *dependencies,
        ],
    )


def _pip_install(target: Path, arguments: list[str]) -> Path:
    """``pip install --target target`` of ``arguments``, uncompiled; ``target``."""
    _run(
        [*_PIP, "install", "--quiet", "--no-compile", "--target", str(target), *arguments],
        what="pip install",
        timeout=_PIP_TIMEOUT,
    )
    # Console scripts name the host's interpreter; the image runs `python3 -m hodei`.
    shutil.rmtree(target / "bin", ignore_errors=True)
    return target


def _debootstrap(sites: list[Path], out_tar: Path) -> None:
    _run(
        debootstrap(sites, out_tar, install_dir=AGENT_IMAGE_ENV["PYTHONPATH"]),
        what="mmdebstrap",
        timeout=_MMDEBSTRAP_TIMEOUT,
    )


def _append_to_copy(base: Path, package: Path, out_tar: Path) -> None:
    """A copy of ``base`` with ``package``'s files added under the install directory, owned by root and
    readable by all (the agent runs unprivileged), their times kept (the bytecode names its source's)."""
    shutil.copyfile(base, out_tar)
    with tarfile.open(out_tar, "a") as tar:
        for path in sorted(package.rglob("*")):
            info = tar.gettarinfo(
                path, f".{AGENT_IMAGE_ENV['PYTHONPATH']}/{path.relative_to(package).as_posix()}"
            )
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with path.open("rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)
