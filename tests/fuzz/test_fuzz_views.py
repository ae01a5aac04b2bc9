"""The terminal views render whatever a worker holds: labels such as ``[/]`` are text, never markup, and no
control character (an escape sequence, an OSC 8 link) reaches the terminal."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from hodei._views import PoolView, workers_table
from hodei.domain import WorkerCapabilities, WorkerRecord, WorkerType, validate_record
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.transport import _codec as codec
from hodei.transport._codec import pb
from tests.fuzz import strategies as fuzz

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def rendered(renderable: object) -> str:
    console = Console(record=True, width=200, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def record_of(request: pb.RegisterWorkerRequest) -> WorkerRecord:
    return codec.record_from_request(request, registered_at=_NOW)


@settings(max_examples=300, deadline=None)
@given(request=fuzz.valid_register_worker_requests)
def test_any_registrable_worker_renders_in_the_table_and_the_live_view(
    request: pb.RegisterWorkerRequest,
) -> None:
    record = record_of(request)
    view = PoolView()
    view.apply(WorkerEvent(1, WorkerEventKind.REGISTERED, record.worker_id, record, "", _NOW))

    assert validate_record(record) == []
    for text in (rendered(workers_table([record], "1 worker")), rendered(view.render("127.0.0.1:1"))):
        assert _CONTROL.sub("", text.replace("\n", "")) == text.replace("\n", "")


@settings(max_examples=300, deadline=None)
@given(
    labels=st.dictionaries(st.text(max_size=12), st.text(max_size=30), max_size=4),
    reason=st.text(max_size=30),
)
def test_even_an_unregistrable_worker_or_reason_renders_without_markup_or_control_characters(
    labels: dict[str, str], reason: str
) -> None:
    record = WorkerRecord(
        worker_id="w-[/]\x1b[2J",
        worker_type=WorkerType.DOCKER,
        capabilities=WorkerCapabilities(1, 1),
        labels=labels,
        pool="[bold]",
    )
    view = PoolView()
    view.apply(WorkerEvent(1, WorkerEventKind.DRAINING, record.worker_id, record, reason, _NOW))

    text = rendered(view.render("[/]"))

    assert "\x1b" not in text
    assert _CONTROL.sub("", text.replace("\n", "")) == text.replace("\n", "")
    assert "w-[/]\\x1b[2J" in text.replace("\n", "")


def test_a_label_value_of_closing_markup_is_shown_as_it_is() -> None:
    record = record_of(
        pb.RegisterWorkerRequest(
            worker_id="w-1",
            capabilities=pb.WorkerCapabilities(cpu_cores=1, memory_mb=1),
            metadata=pb.WorkerMetadata(worker_type="docker", labels={"team": "[/]", "x": "[red]y"}),
        )
    )

    assert "team=[/],x=[red]y" in rendered(workers_table([record], "[bold]1 worker[/bold]"))


def test_the_replica_a_worker_is_connected_via_is_shown_as_it_is_whatever_it_holds() -> None:
    record = WorkerRecord(
        worker_id="w-1",
        worker_type=WorkerType.DOCKER,
        capabilities=WorkerCapabilities(1, 1, 0, 0),
        lease_ttl=15.0,
        connected_via="[replica]:50051",
    )

    assert "connected via [replica]:50051" in rendered(workers_table([record], "1 worker"))
