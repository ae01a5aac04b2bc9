"""``hodei workers list`` and ``watch`` show what a client registered as it is: a label ``[/]`` crashed both with
a rich MarkupError; a label holding an escape sequence can no longer be registered."""

from __future__ import annotations

import json

import pytest

from hodei import InvalidWorkerData
from hodei.testing import EmbeddedScheduler
from tests.helpers import make_worker
from tests.integration.helpers import run_hodei, table_rows

LABELS = {"team": "[/]", "x": "[red]y"}


async def test_workers_list_and_watch_show_a_label_of_markup_as_it_is(scheduler: EmbeddedScheduler) -> None:
    await scheduler.client().register_worker(make_worker("w-markup", labels=LABELS))

    listed = await run_hodei("workers", "list", "--scheduler", scheduler.target)
    watched = await run_hodei("workers", "watch", "--scheduler", scheduler.target, "--exit-after", "3")
    as_json = await run_hodei(
        "workers", "watch", "--json", "--scheduler", scheduler.target, "--exit-after", "3"
    )

    assert listed.returncode == 0, listed
    assert table_rows(listed.stdout) == [
        ["w-markup", "available", "docker", "2", "4096", "default", "team=[/],x=[red]y", "none"]
    ]
    assert watched.returncode == 0, watched
    # Through a pipe, one line per event: the snapshot of the worker, whatever its labels hold.
    assert [line.split(" ", 1)[1] for line in watched.stdout.splitlines()] == [
        "#0 snapshot w-markup available"
    ]
    assert as_json.returncode == 0, as_json
    [snapshot] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert (snapshot["kind"], snapshot["worker_id"], snapshot["labels"]) == ("snapshot", "w-markup", LABELS)
    assert "Traceback" not in watched.stdout + watched.stderr + as_json.stderr


@pytest.mark.parametrize("value", ["\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\", "\x1b[2J", "\x00"])
async def test_a_label_holding_an_escape_sequence_or_nul_cannot_be_registered(
    scheduler: EmbeddedScheduler, value: str
) -> None:
    with pytest.raises(InvalidWorkerData) as raised:
        await scheduler.client().register_worker(make_worker("w-escape", labels={"link": value}))

    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("metadata.labels['link']", "value must not contain control characters")
    ]
    assert await scheduler.workers() == []
