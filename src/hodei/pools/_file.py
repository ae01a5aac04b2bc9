"""The pool file: pools declared in TOML, read whole or refused whole with the file, the line and the field.

::

    [pools.builders]
    kind = "dynamic"            # or "static", with size = N
    provider = "process"        # or "docker"
    min = 0
    max = 50
    warm = 2
    idle_timeout = "5m"         # seconds as a number, or "500ms", "30s", "5m", "1h"

    [pools.builders.template]
    cpu_cores = 2
    memory_mb = 4096
    labels = { os = "linux" }

A file that does not parse, names an unknown key, gives a value of the wrong type, or declares an invalid pool
raises :class:`PoolFileError` naming the first problem's line and field, and every problem found in its
message; nothing of it is used.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hodei._quoting import clip, quote_short
from hodei.domain import FieldViolation, WorkerType
from hodei.pools._spec import PoolKind, PoolSpec, WorkerTemplate

__all__ = ["MAX_POOLS", "MAX_POOL_FILE_BYTES", "PoolFileError", "load_pools", "parse_pools", "read_pool_file"]

MAX_POOL_FILE_BYTES = 1024 * 1024
MAX_POOLS = 1000

_DURATION = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HEADER = re.compile(r"\s*\[([A-Za-z0-9_.\-\" \t]{1,600})\]")  # one run of name characters: linear
_KEY = re.compile(r"\s*([A-Za-z0-9_.\-]{1,300})\s*=")

_POOL_KEYS = {
    "kind",
    "provider",
    "size",
    "min",
    "max",
    "warm",
    "idle_timeout",
    "max_provisioning",
    "provision_timeout",
    "scale_up_cooldown",
    "scale_down_cooldown",
    "max_use_count",
    "template",
}
_DYNAMIC_ONLY = {"min", "max", "warm", "idle_timeout", "scale_up_cooldown", "scale_down_cooldown"}
_INTEGERS = {"size", "min", "max", "warm", "max_provisioning", "max_use_count"}
_DURATIONS = {"idle_timeout", "provision_timeout", "scale_up_cooldown", "scale_down_cooldown"}
_TEMPLATE_INTEGERS = {"cpu_cores", "memory_mb", "disk_mb", "gpu_count"}
_TEMPLATE_KEYS = _TEMPLATE_INTEGERS | {"labels", "image"}


@dataclass(frozen=True, slots=True)
class Problem:
    pool: str | None
    field: str
    description: str


class PoolFileError(ValueError):
    """The pool file cannot be used: ``path:line: field: description`` for the first problem, then the others."""

    def __init__(self, path: str, line: int, problems: list[tuple[int, str, str]]) -> None:
        self.path, self.line = path, line
        self.problems = problems  # (line, field, description), in file order
        first = problems[0]
        self.field = first[1]
        lines = [f"{path}:{ln}: {fld}: {desc}" for ln, fld, desc in problems[:20]]
        if len(problems) > 20:
            lines.append(f"… and {len(problems) - 20} more problems")
        super().__init__("\n".join(lines))


def load_pools(path: str | Path) -> dict[str, PoolSpec]:
    """The pools declared in the file at ``path``, by name."""
    return parse_pools(read_pool_file(path), source=str(path))


def read_pool_file(path: str | Path) -> str:
    """The text of the pool file at ``path`` (at most :data:`MAX_POOL_FILE_BYTES`, UTF-8), unparsed; raises
    :class:`PoolFileError` if it cannot be read."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_POOL_FILE_BYTES + 1)
    except OSError as error:
        raise PoolFileError(
            str(path), 0, [(0, "file", f"cannot be read: {error.strerror or error}")]
        ) from None
    if len(data) > MAX_POOL_FILE_BYTES:
        raise PoolFileError(str(path), 0, [(0, "file", f"is larger than {MAX_POOL_FILE_BYTES} bytes")])
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        raise PoolFileError(str(path), 1, [(1, "file", f"is not UTF-8 (byte {error.start})")]) from None
    return text


def parse_pools(text: str, *, source: str = "<pools>") -> dict[str, PoolSpec]:
    """The pools declared in ``text`` (the pool file's contents); ``source`` names it in errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        found = re.search(r"line (\d+)", str(error))
        line = int(found.group(1)) if found else 1
        raise PoolFileError(source, line, [(line, "file", f"is not valid TOML: {error}")]) from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise PoolFileError(source, 1, [(1, "file", "nests arrays or tables too deeply")]) from None
    lines = _Lines(text)
    problems: list[Problem] = []
    specs: dict[str, PoolSpec] = {}
    for key in document:
        if key != "pools":
            problems.append(Problem(None, key, "unknown key (the file holds [pools.NAME] tables)"))
    pools = document.get("pools", {})
    if not isinstance(pools, dict):
        problems.append(Problem(None, "pools", "must be a table of pools"))
        pools = {}
    if len(pools) > MAX_POOLS:
        problems.append(Problem(None, "pools", f"at most {MAX_POOLS} pools, got {len(pools)}"))
        pools = {}
    for name, table in pools.items():
        spec = _pool(name, table, problems)
        if spec is not None:
            specs[name] = spec
    if problems:
        located = sorted(
            ((lines.find(p.pool, p.field), _qualified(p), p.description) for p in problems),
            key=lambda x: x[0],
        )
        raise PoolFileError(source, located[0][0], located)
    return specs


def _qualified(problem: Problem) -> str:
    """The field as the message names it: the file's own keys, escaped and clipped (they are the file's text)."""
    if problem.pool is None:
        return _shown_key(problem.field)
    pool = _shown_key(problem.pool)
    return f"pools.{pool}.{_shown_key(problem.field)}" if problem.field != "name" else f"pools.{pool}"


def _shown_key(text: str) -> str:
    return clip(ascii(text)[1:-1])


def _pool(name: str, table: Any, problems: list[Problem]) -> PoolSpec | None:
    shown = quote_short(name)
    if not isinstance(table, dict):
        problems.append(Problem(name, "name", f"pool {shown} must be a table"))
        return None
    before = len(problems)
    for key in table:
        if key not in _POOL_KEYS:
            problems.append(Problem(name, key, f"unknown key {quote_short(key)}"))
    kind_value = table.get("kind", PoolKind.DYNAMIC.value)
    if kind_value not in {k.value for k in PoolKind}:
        problems.append(Problem(name, "kind", f"must be static or dynamic, got {_shown(kind_value)}"))
        return None
    kind = PoolKind(kind_value)
    provider_value = table.get("provider")
    if provider_value not in (WorkerType.PROCESS.value, WorkerType.DOCKER.value):
        problems.append(Problem(name, "provider", f"must be process or docker, got {_shown(provider_value)}"))
    if kind is PoolKind.STATIC:
        if "size" not in table:
            problems.append(Problem(name, "size", "is required for a static pool"))
        for key in sorted(_DYNAMIC_ONLY & table.keys()):
            problems.append(Problem(name, key, "applies to dynamic pools only (a static pool has a size)"))
    elif "size" in table:
        problems.append(
            Problem(name, "size", "applies to static pools only (a dynamic pool has min and max)")
        )
    fields: dict[str, Any] = {}
    for key in _INTEGERS & table.keys():
        if _is_int(table[key]):
            fields[key] = table[key]
        else:
            problems.append(Problem(name, key, f"must be a whole number, got {_shown(table[key])}"))
    for key in _DURATIONS & table.keys():
        seconds = _seconds(table[key])
        if seconds is None:
            problems.append(
                Problem(name, key, f"must be seconds or a duration like 30s, 5m, got {_shown(table[key])}")
            )
        else:
            fields[key] = seconds
    template = _template(name, table.get("template", {}), problems)
    if len(problems) > before:
        return None
    size = fields.pop("size", None)
    if size is not None:
        fields["min"] = fields["max"] = size
    spec = PoolSpec(
        name=name, kind=kind, provider=WorkerType(str(provider_value)), template=template, **fields
    )
    for violation in spec.violations():
        problems.append(Problem(name, _as_written(violation, kind), violation.description))
    return spec


def _as_written(violation: FieldViolation, kind: PoolKind) -> str:
    if kind is PoolKind.STATIC and violation.field in {"min", "max"}:
        return "size"
    return violation.field


def _template(pool: str, table: Any, problems: list[Problem]) -> WorkerTemplate:
    if not isinstance(table, dict):
        problems.append(Problem(pool, "template", "must be a table"))
        return WorkerTemplate()
    fields: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _TEMPLATE_KEYS:
            problems.append(Problem(pool, f"template.{key}", f"unknown key {quote_short(key)}"))
        elif key in _TEMPLATE_INTEGERS and not _is_int(value):
            problems.append(Problem(pool, f"template.{key}", f"must be a whole number, got {_shown(value)}"))
        elif key == "image" and not isinstance(value, str):
            problems.append(Problem(pool, "template.image", f"must be a string, got {_shown(value)}"))
        elif key == "labels" and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            problems.append(Problem(pool, "template.labels", "must be a table of strings"))
        else:
            fields[key] = value
    return WorkerTemplate(**fields)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        found = _DURATION.fullmatch(value.strip())
        if found:
            return float(found.group(1)) * _UNITS[found.group(2)]
    return None


def _shown(value: object) -> str:
    return quote_short(value) if isinstance(value, str) else quote_short(repr(value))


class _Lines:
    """Where a pool's key was written: the line of ``key =`` under its table, else the table's header."""

    def __init__(self, text: str) -> None:
        self.headers: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                table = _table_name(header.group(1))
                self.headers.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                self.keys.setdefault((table, key.group(1)), number)

    def find(self, pool: str | None, field: str) -> int:
        if pool is None:
            return self.headers.get(field, self.keys.get(("", field), 1))
        table = f"pools.{pool}"
        head, _, rest = field.partition(".")
        rest = rest.partition("[")[0]  # labels['key'] was written as labels = {...}
        candidates = [(table, field)]
        if rest:
            candidates += [(f"{table}.{head}", rest), (table, head)]
        for candidate in candidates:
            if candidate in self.keys:
                return self.keys[candidate]
        if rest and f"{table}.{head}" in self.headers:
            return self.headers[f"{table}.{head}"]
        return self.headers.get(table, self.keys.get(("pools", pool), 1))


def _table_name(header: str) -> str:
    """``pools . "a b" . template`` → ``pools.a b.template``."""
    return ".".join(part.strip().strip('"') for part in header.split("."))
