"""The views of ``hodei pools``: what each table, line and JSON object says, with client text shown as it is."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

from rich.console import Console, RenderableType

from hodei._pool_views import (
    PoolsView,
    demand_table,
    pool_detail,
    pool_event_json,
    pool_event_line,
    pools_lines,
    pools_table,
)
from hodei.domain import WorkerCapabilities, WorkerRecord, WorkerStatus, WorkerType
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.pools import PoolKind, PoolSpec, PoolStatus, Requirements, WaitingDemand, WorkerTemplate

AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
DYNAMIC = PoolSpec(
    name="builders",
    kind=PoolKind.DYNAMIC,
    provider=WorkerType.PROCESS,
    template=WorkerTemplate(cpu_cores=4, memory_mb=2048, labels={"team": "[/]", "os": "linux"}),
    min=1,
    max=5,
    warm=2,
    idle_timeout=90.0,
    max_use_count=10,
)
STATIC = PoolSpec.static(
    "fixed", 2, provider=WorkerType.DOCKER, template=WorkerTemplate(image="hodei-agent:1")
)
BUILDERS = PoolStatus(DYNAMIC, {WorkerStatus.BUSY: 2, WorkerStatus.AVAILABLE: 1}, waiting=3)
FIXED = PoolStatus(STATIC)
WAITING = WaitingDemand(
    Requirements(cpu_cores=2, labels={"x": "[red]y\x1b"}), 3, 12.34, ("builders", "fixed")
)


def text(renderable: RenderableType) -> str:
    console = Console(file=io.StringIO(), width=1000, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def rows(renderable: RenderableType) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text(renderable).splitlines()
        if line.startswith("│")
    ]


def event(kind: WorkerEventKind, *, record: WorkerRecord | None = None, **fields: object) -> WorkerEvent:
    return WorkerEvent(
        7, kind, fields.pop("worker_id", ""), record, str(fields.pop("reason", "")), AT, **fields
    )  # type: ignore[arg-type]


def test_the_pools_table_has_a_row_per_pool_in_name_order_with_sizes_by_status_and_waiting() -> None:
    shown = pools_table([FIXED, BUILDERS], "2 pool(s) on [here]")

    assert rows(shown) == [
        ["builders", "dynamic", "process", "1/5", "3", "1 available, 2 busy", "3"],
        ["fixed", "static", "docker", "2/2", "0", "none", "0"],
    ]
    assert pools_lines([FIXED, BUILDERS]).splitlines() == [
        "pool 'builders' dynamic process 1/5 size=3 [1 available, 2 busy] waiting=3",
        "pool 'fixed' static docker 2/2 size=0 [none] waiting=0",
    ]


def test_a_pools_detail_shows_every_field_of_its_kind_and_its_labels_as_they_are() -> None:
    dynamic = dict(rows(pool_detail(BUILDERS)))
    static = dict(rows(pool_detail(FIXED)))

    assert dynamic == {
        "kind": "dynamic",
        "provider": "process",
        "min": "1",
        "max": "5",
        "warm": "2",
        "idle_timeout": "90 s",
        "scale_up_cooldown": "0 s",
        "scale_down_cooldown": "30 s",
        "max_provisioning": "10",
        "provision_timeout": "120 s",
        "max_use_count": "10",
        "template": "cpu 4, memory 2048 MB, disk 0 MB, gpu 0",
        "labels": "os=linux,team=[/]",
        "image": "-",
        "size": "3",
        "by status": "1 available, 2 busy",
        "waiting": "3",
        "scaled": "-",
    }
    assert "warm" not in static and "idle_timeout" not in static
    assert (static["max_use_count"], static["labels"], static["image"]) == ("-", "-", "hodei-agent:1")


def test_the_demand_table_escapes_control_characters_and_never_reads_markup() -> None:
    shown = demand_table([WAITING], "waiting")

    assert rows(shown) == [["cpu=2 x=[red]y\\x1b", "3", "12.3 s", "builders,fixed"]]
    assert "\x1b" not in text(shown)
    assert rows(demand_table([WaitingDemand(Requirements(), 1)], "waiting"))[0][3] == "none"


def test_a_demand_event_is_one_line_of_what_waits_and_a_worker_event_names_its_pool() -> None:
    record = WorkerRecord(
        worker_id="builders-1", worker_type=WorkerType.PROCESS, capabilities=WorkerCapabilities(1, 256),
        status=WorkerStatus.BUSY, pool="builders",
    )  # fmt: skip

    demand = pool_event_line(event(WorkerEventKind.DEMAND, demand=(WAITING,)))
    nothing = pool_event_line(event(WorkerEventKind.DEMAND))
    assigned = pool_event_line(
        event(WorkerEventKind.ASSIGNED, record=record, worker_id="builders-1", reason="job-1")
    )
    gone = pool_event_line(event(WorkerEventKind.UNREGISTERED, worker_id="builders-1"))

    assert demand == f"2026-01-02T03:04:05.678+00:00 #7 demand {WAITING.shape} waiting=3 pools=builders,fixed"
    assert nothing.endswith(" demand none")
    assert assigned == "2026-01-02T03:04:05.678+00:00 #7 assigned builders-1 pool=builders busy job-1"
    assert gone == "2026-01-02T03:04:05.678+00:00 #7 unregistered builders-1 pool=- -"


def test_a_demand_line_names_five_shapes_and_counts_the_rest() -> None:
    shapes = tuple(
        WaitingDemand(Requirements(labels={"shape": f"s{i:04}" + "x" * 50}), 2, 1.0, ("builders",))
        for i in range(1000)
    )

    line = pool_event_line(event(WorkerEventKind.DEMAND, demand=shapes))

    assert line.count("waiting=2") == 5
    assert line.endswith("; and 995 more shapes, 1990 waiting")
    assert len(line) < 600


def test_an_event_as_json_carries_its_worker_pool_and_demand() -> None:
    shown = json.loads(pool_event_json(event(WorkerEventKind.DEMAND, demand=(WAITING,), reason="3 waiting")))
    released = json.loads(pool_event_json(event(WorkerEventKind.RELEASED, worker_id="w")))

    assert shown == {
        "time": "2026-01-02T03:04:05.678+00:00",
        "sequence": 7,
        "kind": "demand",
        "worker_id": "",
        "pool": None,
        "status": None,
        "reason": "3 waiting",
        "demand": [
            {
                "requirements": WAITING.shape,
                "waiting": 3,
                "oldest_wait": 12.34,
                "pools": ["builders", "fixed"],
            }
        ],
    }
    assert (released["kind"], released["worker_id"], released["demand"]) == ("released", "w", [])


def test_the_live_view_shows_the_pools_last_read_and_the_latest_events() -> None:
    view = PoolsView("[host]:1", recent=2)
    view.update([BUILDERS])
    for reason in ("job-1", "job-2", "job-3"):
        view.apply(event(WorkerEventKind.RELEASED, worker_id="builders-1", reason=reason))

    shown = text(view.render())

    assert "1 pool(s) on [host]:1" in shown
    assert rows(view.render())[0][0] == "builders"
    assert [line.rsplit(" ", 1)[1] for line in shown.splitlines() if " released " in line] == [
        "job-2",
        "job-3",
    ]


def test_a_pools_detail_shows_its_last_scale_events_newest_first_and_a_scale_event_is_one_line() -> None:
    from dataclasses import replace

    from hodei.pools import ScaleEvent

    up = ScaleEvent("builders", "up", "waiting_jobs", 3, 3, AT)
    down = ScaleEvent("builders", "down", "idle", 0, 3, AT)
    shown = rows(pool_detail(replace(BUILDERS, recent=(up, down))))

    at = AT.isoformat(timespec="seconds")
    assert shown[-2:] == [
        ["scaled", f"{at} down 3 (idle), desired 0"],
        ["", f"{at} up 3 (waiting_jobs), desired 3"],
    ]
    line = pool_event_line(event(WorkerEventKind.POOL_SCALED, reason=up.describe()))
    assert (
        line
        == f"{AT.isoformat(timespec='milliseconds')} #7 pool_scaled pool builders up 3 (waiting_jobs), desired 3"
    )
