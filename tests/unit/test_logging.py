"""Structured logs: the JSON and console formats, the context fields, trace ids inside spans, and redaction.

Every test logs into a stream it owns (``configure_logging(stream=...)``); the root logger is put back as it
was afterwards.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hodei import ErrorCode, MaxRetriesExceeded
from hodei.domain import WorkerStatus
from hodei.errors import scheduler_error_for
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.observability._logging import REDACTED, configure_logging, log_worker_event, redact_text
from tests.helpers import make_worker
from tests.unit.helpers import ScriptedPort, adapter, error, receipt

SECRET = "hunter2-S3CRET"
DSN = f"postgresql://hodei:{SECRET}@db.internal:5432/registry"

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)
        structlog.reset_defaults()


@pytest.fixture
def json_log(restore_logging: None) -> tuple[io.StringIO, Lines]:
    """Logs at DEBUG as JSON into a string; ``lines()`` parses what was written so far."""
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    return stream, lines


# --- format and context --------------------------------------------------------------------------------


def test_a_json_line_has_timestamp_level_logger_event_and_each_extra_key_as_a_field(
    json_log: tuple[io.StringIO, Lines],
) -> None:
    _, lines = json_log

    logging.getLogger("hodei.example").warning(
        "registration.retrying",
        extra={"worker_id": "w-1", "attempt": 2, "backoff_s": 0.2, "code": "UNAVAILABLE"},
    )

    [line] = lines()
    assert line["event"] == "registration.retrying"
    assert line["level"] == "warning"
    assert line["logger"] == "hodei.example"
    assert (line["worker_id"], line["attempt"], line["backoff_s"], line["code"]) == (
        "w-1",
        2,
        0.2,
        "UNAVAILABLE",
    )
    stamped = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - stamped).total_seconds()) < 60
    assert "trace_id" not in line and "span_id" not in line  # no span is active


def test_printf_style_messages_of_other_libraries_come_out_as_one_event_each(
    json_log: tuple[io.StringIO, Lines],
) -> None:
    _, lines = json_log

    logging.getLogger("somelib").info("connected to %s after %d tries", "db", 3)
    structlog.get_logger("native").info("agent.connected", worker_id="w-2")

    assert [(line["event"], line["logger"]) for line in lines()] == [
        ("connected to db after 3 tries", "somelib"),
        ("agent.connected", "native"),
    ]
    assert lines()[1]["worker_id"] == "w-2"


def test_inside_a_span_each_line_carries_that_spans_trace_and_span_ids_in_hex(
    json_log: tuple[io.StringIO, Lines],
) -> None:
    _, lines = json_log
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("outer") as outer:
        logging.getLogger("hodei.x").info("in.outer")
        with tracer.start_as_current_span("inner") as inner:
            logging.getLogger("hodei.x").info("in.inner")
    logging.getLogger("hodei.x").info("after")

    in_outer, in_inner, after = lines()
    assert in_outer["trace_id"] == f"{outer.get_span_context().trace_id:032x}"
    assert in_outer["span_id"] == f"{outer.get_span_context().span_id:016x}"
    assert in_inner["trace_id"] == in_outer["trace_id"]
    assert in_inner["span_id"] == f"{inner.get_span_context().span_id:016x}"
    assert "trace_id" not in after


def test_below_the_level_nothing_is_written(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream=stream)

    logging.getLogger("hodei.x").info("quiet")
    logging.getLogger("hodei.x").warning("loud")

    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_the_console_format_is_one_readable_line_of_key_value_pairs(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)

    logging.getLogger("hodei.agent").info("agent.reconnecting", extra={"worker_id": "w-3", "delay_s": 1.5})

    [line] = stream.getvalue().splitlines()
    assert "agent.reconnecting" in line and "[hodei.agent]" in line
    assert "worker_id=w-3" in line and "delay_s=1.5" in line
    assert not line.startswith("{")


def test_auto_is_json_when_the_stream_is_not_a_terminal(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("auto", "info", stream=stream)

    logging.getLogger("hodei.x").info("piped")

    assert json.loads(stream.getvalue())["event"] == "piped"


def test_configuring_again_replaces_the_handler_instead_of_doubling_the_lines(restore_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", stream=first)
    configure_logging("json", "info", stream=second)

    logging.getLogger("hodei.x").info("once")

    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1


def test_an_unknown_format_or_level_is_refused(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging("xml", "info")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level 'loud'"):
        configure_logging("json", "loud")


# --- redaction -----------------------------------------------------------------------------------------


# A join token as hodei mints them (HS256): header, payload, signature.
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJob2RlaS1qb2luIiwic3ViIjoidy0xIn0."
    "k3p9Tq4Zx0vRrQeY3bW9mN2uJ7cF1hL8sD6aG5eK0oI"
)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (DSN, f"postgresql://hodei:{REDACTED}@db.internal:5432/registry"),
        (
            f"cannot reach 'postgres://u:{SECRET}@h/db' now",
            f"cannot reach 'postgres://u:{REDACTED}@h/db' now",
        ),
        (f"https://x:{SECRET}@ci.example/a@b", f"https://x:{REDACTED}@b"),  # a path with an @ is masked too
        (
            f"postgresql://h/db?user=u&password={SECRET}&ssl=1",
            f"postgresql://h/db?user=u&password={REDACTED}&ssl=1",
        ),
        (f"host=db user=u password={SECRET} port=5", f"host=db user=u password={REDACTED} port=5"),
        (f"{{'api_token': '{SECRET}', 'a': 1}}", f"{{'api_token': {REDACTED}, 'a': 1}}"),
        (f'{{"client_secret": "{SECRET}"}}', f'{{"client_secret": {REDACTED}}}'),
        (f"Authorization: Bearer {SECRET}", f"Authorization: Bearer {REDACTED}"),
        (f"joined with {JWT}, then left", f"joined with {REDACTED}, then left"),
        (f"sent [{JWT}] twice", f"sent [{REDACTED}] twice"),
        (f"unsigned {JWT.rsplit('.', 1)[0]}.", f"unsigned {REDACTED}"),
        ("eyJ alone, eyJhbGciOiJIUzI1NiJ9 alone", "eyJ alone, eyJhbGciOiJIUzI1NiJ9 alone"),
        ("postgresql://nobody@127.0.0.1:5432/db", "postgresql://nobody@127.0.0.1:5432/db"),
        (
            "registration.retrying attempt=2 code=UNAVAILABLE",
            "registration.retrying attempt=2 code=UNAVAILABLE",
        ),
    ],
)
def test_secrets_inside_text_are_masked_and_the_rest_is_kept(text: str, masked: str) -> None:
    assert redact_text(text) == masked


def test_no_secret_reaches_the_log_whichever_way_it_is_given(json_log: tuple[io.StringIO, Lines]) -> None:
    stream, lines = json_log
    log = logging.getLogger("hodei.leaky")

    log.info(
        "worker.configured",
        extra={
            "token": SECRET,
            "Authorization": f"Bearer {SECRET}",
            "store": DSN,
            "labels": {"ci_api_key": SECRET, "arch": "amd64", "nested": [{"password": SECRET}]},
            "targets": [DSN, "127.0.0.1:1"],
        },
    )
    log.warning("cannot open %s", DSN)
    try:
        raise ConnectionError(f"connect to {DSN} failed")
    except ConnectionError:
        log.exception("store.unreachable")
    structlog.get_logger("native").error("store.unreachable", dsn=DSN, password=SECRET)

    assert SECRET not in stream.getvalue()
    configured, opened, failed, native = lines()
    assert configured["token"] == configured["Authorization"] == REDACTED
    assert configured["store"] == f"postgresql://hodei:{REDACTED}@db.internal:5432/registry"
    assert configured["labels"] == {
        "ci_api_key": REDACTED,
        "arch": "amd64",
        "nested": [{"password": REDACTED}],
    }
    assert configured["targets"][1] == "127.0.0.1:1"
    assert "db.internal" in opened["event"]
    assert "ConnectionError: connect to postgresql://hodei:[redacted]@db.internal" in failed["exception"]
    assert native["dsn"] == native["password"] == REDACTED


def test_a_console_traceback_is_plain_text_without_local_variables(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)

    def open_store(dsn: str) -> None:
        password = SECRET  # a local that a rich traceback would print
        raise ConnectionError(f"refused ({len(password)})")

    try:
        open_store(DSN)
    except ConnectionError:
        logging.getLogger("hodei.x").exception("store.unreachable")

    assert "ConnectionError: refused (14)" in stream.getvalue()
    assert SECRET not in stream.getvalue()


# --- hodei's events ------------------------------------------------------------------------------------


async def test_the_adapter_logs_each_retry_with_attempt_backoff_and_code_then_the_outcome(
    json_log: tuple[io.StringIO, Lines],
) -> None:
    _, lines = json_log
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE), error(ErrorCode.RESOURCE_EXHAUSTED, retry_after=0.75)]
    registration, _ = adapter(port)

    await registration.register_worker(make_worker("w-logged"))

    events = [line for line in lines() if line["logger"] == "hodei.registration"]
    assert [e["event"] for e in events] == [
        "registration.retrying",
        "registration.retrying",
        "registration.succeeded",
    ]
    first, second, done = events
    assert (first["worker_id"], first["attempt"], first["code"], first["backoff_s"]) == (
        "w-logged",
        1,
        "UNAVAILABLE",
        0.1,
    )
    assert (second["attempt"], second["code"], second["backoff_s"]) == (2, "RESOURCE_EXHAUSTED", 0.75)
    assert first["level"] == "warning" and first["worker_type"] == "docker"
    assert (done["worker_id"], done["attempts"], done["level"]) == ("w-logged", 3, "info")


async def test_a_registration_that_runs_out_of_attempts_is_logged_once_as_failed_with_its_reason(
    json_log: tuple[io.StringIO, Lines],
) -> None:
    _, lines = json_log
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)] * 2
    registration, _ = adapter(port, max_retries=1)

    with pytest.raises(MaxRetriesExceeded):
        await registration.register_worker(make_worker("w-exhausted"))

    [failed] = [line for line in lines() if line["event"] == "registration.failed"]
    assert (failed["worker_id"], failed["attempts"], failed["reason"], failed["code"]) == (
        "w-exhausted",
        2,
        "exhausted",
        "UNAVAILABLE",
    )
    assert failed["level"] == "error"


async def test_the_adapters_lines_carry_the_ids_of_the_attempt_span_they_were_logged_in(
    json_log: tuple[io.StringIO, Lines], spans: InMemorySpanExporter
) -> None:
    _, lines = json_log
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)]
    registration, _ = adapter(port)

    await registration.register_worker(make_worker("w-traced"))

    attempts = sorted(
        (s for s in spans.get_finished_spans() if s.name == "register_worker.attempt"),
        key=lambda s: s.start_time or 0,
    )
    retrying, succeeded = [line for line in lines() if line["logger"] == "hodei.registration"]
    assert attempts[0].context is not None and attempts[1].context is not None
    assert retrying["span_id"] == f"{attempts[0].context.span_id:016x}"
    assert succeeded["span_id"] == f"{attempts[1].context.span_id:016x}"
    assert retrying["trace_id"] == succeeded["trace_id"] == f"{attempts[0].context.trace_id:032x}"


async def test_a_scheduler_message_holding_a_password_is_masked_in_the_adapters_lines(
    json_log: tuple[io.StringIO, Lines],
) -> None:
    stream, _ = json_log
    port = ScriptedPort()
    port.single = [scheduler_error_for(ErrorCode.UNAVAILABLE, f"the registry {DSN} is unreachable")]
    registration, _ = adapter(port)

    await registration.register_worker(make_worker("w-masked"))

    assert "registration.retrying" in stream.getvalue()
    assert SECRET not in stream.getvalue()


def test_a_lost_worker_is_one_warning_line_and_a_registration_is_left_to_the_grpc_service(
    json_log: tuple[io.StringIO, Lines],
) -> None:
    _, lines = json_log
    at = datetime(2026, 1, 1, tzinfo=UTC)
    lost_record = replace(receipt(make_worker("w-lost")).record, status=WorkerStatus.LOST, incarnation=7)

    log_worker_event(WorkerEvent(3, WorkerEventKind.LOST, "w-lost", lost_record, "no heartbeat for 15 s", at))
    log_worker_event(WorkerEvent(4, WorkerEventKind.REGISTERED, "w-new", lost_record, "", at))
    log_worker_event(WorkerEvent(5, WorkerEventKind.EXPIRY_SLOWED, "", None, "12 of 20 silent", at))

    lost_line, slowed = lines()
    assert lost_line["event"] == "worker.lost" and lost_line["level"] == "warning"
    assert (lost_line["worker_id"], lost_line["status"], lost_line["incarnation"]) == ("w-lost", "lost", 7)
    assert lost_line["reason"] == "no heartbeat for 15 s" and lost_line["sequence"] == 3
    assert slowed["event"] == "pool.expiry_slowed" and "worker_id" not in slowed
