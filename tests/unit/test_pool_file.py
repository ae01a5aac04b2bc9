"""The pool file: read whole, or refused whole naming the file, the line and the field."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hodei.domain import WorkerType
from hodei.pools import PoolFileError, PoolKind, PoolSpec, WorkerTemplate, load_pools, parse_pools

GOOD = """\
[pools.builders]
kind = "dynamic"
provider = "process"
min = 0
max = 50
warm = 2
idle_timeout = "5m"
max_provisioning = 8
provision_timeout = 90
scale_up_cooldown = "500ms"
scale_down_cooldown = "1h"
max_use_count = 100

[pools.builders.template]
cpu_cores = 4
memory_mb = 8192
labels = { os = "linux" }

[pools.linters]
kind = "static"
provider = "docker"
size = 3
template = { cpu_cores = 1, memory_mb = 512, image = "hodei-agent:dev" }
"""


def test_a_valid_file_gives_every_pool_as_declared(tmp_path: Path) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(GOOD)

    pools = load_pools(path)

    assert pools == {
        "builders": PoolSpec(
            name="builders",
            kind=PoolKind.DYNAMIC,
            provider=WorkerType.PROCESS,
            template=WorkerTemplate(cpu_cores=4, memory_mb=8192, labels={"os": "linux"}),
            min=0,
            max=50,
            warm=2,
            idle_timeout=300.0,
            max_provisioning=8,
            provision_timeout=90.0,
            scale_up_cooldown=0.5,
            scale_down_cooldown=3600.0,
            max_use_count=100,
        ),
        "linters": PoolSpec(
            name="linters",
            kind=PoolKind.STATIC,
            provider=WorkerType.DOCKER,
            template=WorkerTemplate(cpu_cores=1, memory_mb=512, image="hodei-agent:dev"),
            min=3,
            max=3,
        ),
    }
    assert pools["builders"].worker_config.pool == "builders"
    assert dict(pools["builders"].worker_config.labels) == {"os": "linux"}


@pytest.mark.parametrize(
    ("replace", "by", "line", "field", "says"),
    [
        ("max = 50", "max = -1", 5, "pools.builders.max", "between 1 and 100000, got -1"),
        ("min = 0", "min = 60", 4, "pools.builders.min", "must not be above max (50), got 60"),
        (
            'idle_timeout = "5m"',
            'idle_timeout = "soon"',
            7,
            "pools.builders.idle_timeout",
            "like 30s, 5m, got 'soon'",
        ),
        ("warm = 2", 'warm = "two"', 6, "pools.builders.warm", "a whole number, got 'two'"),
        ("warm = 2", "warm = true", 6, "pools.builders.warm", "a whole number, got 'True'"),
        (
            "cpu_cores = 4",
            "cpu_cores = 0",
            15,
            "pools.builders.template.cpu_cores",
            "between 1 and 4096, got 0",
        ),
        ("cpu_cores = 4", "cpus = 4", 15, "pools.builders.template.cpus", "unknown key 'cpus'"),
        (
            'provider = "process"',
            'provider = "k8s"',
            3,
            "pools.builders.provider",
            "process or docker, got 'k8s'",
        ),
        (
            'kind = "dynamic"',
            'kind = "elastic"',
            2,
            "pools.builders.kind",
            "static or dynamic, got 'elastic'",
        ),
        ("max_use_count = 100", "max_use_count = 0", 12, "pools.builders.max_use_count", "at least 1, got 0"),
        ("size = 3", "min = 3", 19, "pools.linters.size", "is required for a static pool"),
        (
            'labels = { os = "linux" }',
            'labels = { "bad key!" = "x" }',
            17,
            "pools.builders.template.labels['bad key!']",
            "key must be",
        ),
        ("[pools.linters]", '[pools."lint ers"]', 19, "pools.lint ers", "must be at most 253 letters"),
        ("max = 50", "max = 50\nmax = 51", 6, "file", "is not valid TOML"),
    ],
)
def test_an_invalid_file_is_refused_with_the_line_and_the_field(
    tmp_path: Path, replace: str, by: str, line: int, field: str, says: str
) -> None:
    assert replace in GOOD
    path = tmp_path / "pools.toml"
    path.write_text(GOOD.replace(replace, by, 1))

    with pytest.raises(PoolFileError) as caught:
        load_pools(path)

    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    first = str(error).splitlines()[0]
    assert first.startswith(f"{path}:{line}: {field}: ")
    assert says in first


def test_every_problem_is_listed_in_file_order() -> None:
    text = (
        GOOD.replace("max = 50", "max = 0")
        .replace("size = 3", "size = -2")
        .replace('kind = "static"', 'kind = "static"\nwarm = 1')
    )

    with pytest.raises(PoolFileError) as caught:
        parse_pools(text, source="p.toml")

    assert [(line, field) for line, field, _ in caught.value.problems] == [
        (5, "pools.builders.max"),
        (21, "pools.linters.warm"),
    ]


def test_a_file_nested_too_deeply_is_refused_not_crashed_on() -> None:
    with pytest.raises(PoolFileError, match=r"^p\.toml:1: file: nests arrays or tables too deeply$"):
        parse_pools("x = " + "[" * 5000, source="p.toml")


def test_a_file_that_cannot_be_read_or_is_too_large_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PoolFileError, match=r"missing\.toml:0: file: cannot be read"):
        load_pools(tmp_path / "missing.toml")
    big = tmp_path / "big.toml"
    big.write_text("#" * (1024 * 1024 + 1))
    with pytest.raises(PoolFileError, match=r"big\.toml:0: file: is larger than 1048576 bytes"):
        load_pools(big)


hostile = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        ["a." * 5000 + "=", "[" * 5000, "\x00\x1b[31m[/]", "[pools." + "a" * 100_000 + "]", '"' * 9999]
    ),
)


@settings(max_examples=200, deadline=None)
@given(hostile, hostile)
def test_hostile_text_is_refused_quickly_and_quoted_short(key: str, value: str) -> None:
    text = f'[pools.p]\nprovider = "process"\n{key} = {value}\n[pools.p.template]\nlabels = {{ k = {value!r} }}\n'
    started = time.process_time()
    try:
        parse_pools(text)
    except PoolFileError as error:
        assert len(str(error)) < 4096
        assert "\x1b" not in str(error) and "\x00" not in str(error)
    assert time.process_time() - started < 0.2  # no blow-up: these files parse in time linear in their size


def test_a_long_line_inside_a_string_is_read_in_linear_time() -> None:
    text = '[pools.p]\nprovider = "process"\nnote = """\n[' + " " * 200_000 + '\n"""\n'
    started = time.process_time()

    with pytest.raises(PoolFileError, match=r"pools\.p\.note: unknown key 'note'"):
        parse_pools(text)

    assert time.process_time() - started < 0.2


def test_the_files_own_keys_are_named_escaped_and_clipped() -> None:
    pool = "a" * 5000 + "\x1b[31m"  # written escaped in the file, as TOML wants
    text = '[pools."' + "a" * 5000 + '\\u001b[31m"]\nprovider = "process"\n"k\\u001b[2J" = 1\n'

    with pytest.raises(PoolFileError) as caught:
        parse_pools(text, source="p.toml")

    message = str(caught.value)
    assert "\x1b" not in message and "\x1b" not in caught.value.field
    assert len(message) < 1024
    shown = len(ascii(pool)) - 2  # ESC shown as \x1b
    assert caught.value.field == f"pools.{'a' * 64}… ({shown} chars).k\\x1b[2J"
