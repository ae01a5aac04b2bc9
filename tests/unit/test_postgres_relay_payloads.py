"""How PostgresEventRelay packs its queue into NOTIFY payloads, and what it skips of what it hears, without a
database: the payloads are made and read by the relay's own functions (its sending and listening over a real
PostgreSQL are tests/integration/test_replica_relay.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from hodei.domain import MAX_WORKER_ID_LENGTH
from hodei.lifecycle import CommandKind, WorkerCommand, WorkerEventKind
from hodei.ports import Relayed, RelayedAck, RelayedCommand, RelayedEvent
from hodei.scheduler._relay import REASON_LIMIT
from hodei.stores._postgres_relay import MOST_PER_PAYLOAD, PAYLOAD_LIMIT, PostgresEventRelay, _payload, decode
from tests.helpers import wait_until

MOMENT = datetime(2026, 12, 6, 18, 30, 15, 123456, tzinfo=UTC)


def _relay(*queued: Relayed) -> PostgresEventRelay:
    relay = PostgresEventRelay("postgresql://127.0.0.1:1/none")  # never connects: only packs and hears
    relay._queue.extend(queued)
    return relay


def _drain(relay: PostgresEventRelay) -> list[str]:
    """Every payload the queue is sent in, taking what each carries off the queue as ``_send`` does."""
    payloads = []
    while relay._queue:
        payload, count = relay._pack()
        assert count > 0
        for _ in range(count):
            relay._queue.popleft()
        payloads.append(payload)
    return payloads


def _carried(relay: PostgresEventRelay, payloads: list[str]) -> list[Relayed]:
    messages = []
    for payload in payloads:
        parsed = json.loads(payload)
        assert parsed["o"] == relay.origin
        for item in parsed["m"]:
            messages.extend(decode(item))
    return messages


def _count(payload: str) -> int:
    """How many messages ``payload`` carries (every event of a run counts)."""
    return sum(len(decode(item)) for item in json.loads(payload)["m"])


def _event(n: int, *, time: datetime = MOMENT, reason: str = "") -> RelayedEvent:
    return RelayedEvent(WorkerEventKind.REGISTERED, f"worker-{n:05d}", reason, time)


def test_a_batchs_events_go_in_order_in_full_payloads_under_the_limit() -> None:
    events = [_event(n) for n in range(3_000)]
    relay = _relay(*events)

    payloads = _drain(relay)

    assert _carried(relay, payloads) == events
    assert all(len(payload.encode()) <= PAYLOAD_LIMIT for payload in payloads)
    each = len(json.dumps("worker-00000"))  # what an event adds to its run
    # The first holds one message (nothing is known of their sizes yet); the next ones more, as the estimate
    # learns how little a message adds to its run (the run's head is counted as part of the first ones'); from
    # the fourth on, each holds all that fit but one at most.
    head = len(_payload(relay.origin, []))
    counts = [_count(payload) for payload in payloads]
    assert counts[:2] == [1, (PAYLOAD_LIMIT - head + 1) // (len(payloads[0]) - head + 1)]
    assert counts[1] < counts[2] < counts[3]
    for payload in payloads[3:-1]:
        assert len(payload) + 2 * (each + 1) > PAYLOAD_LIMIT
    # One run a payload: a batch's kind, reason and moment are written once in each.
    assert all(len(json.loads(payload)["m"]) == 1 for payload in payloads)


def test_events_of_another_kind_or_reason_at_the_same_moment_begin_a_run_of_their_own() -> None:
    events = [
        _event(1),
        RelayedEvent(WorkerEventKind.LOST, "worker-00001", "", MOMENT),
        RelayedEvent(WorkerEventKind.LOST, "worker-00002", "", MOMENT),
        RelayedEvent(WorkerEventKind.LOST, "worker-00003", "quiet", MOMENT),
        _event(4),
    ]
    relay = _relay(*events)
    relay._fits = len(events)

    [payload] = _drain(relay)

    assert _carried(relay, [payload]) == events
    assert [len(item[4]) for item in json.loads(payload)["m"]] == [1, 2, 1, 1]


def test_events_of_their_own_moments_carry_each_its_own_time() -> None:
    events = [_event(n, time=MOMENT + timedelta(microseconds=n)) for n in range(500)]
    relay = _relay(*events)

    assert _carried(relay, _drain(relay)) == events


def test_messages_of_every_kind_and_size_mixed_go_in_order_and_no_payload_is_too_large() -> None:
    # The longest: every character escaped as \\uXXXX in the JSON, six bytes each.
    longest = "é" * MAX_WORKER_ID_LENGTH
    command = WorkerCommand(CommandKind.DRAIN, "ü" * REASON_LIMIT, 30.0)
    messages: list[Relayed] = []
    for n in range(600):
        messages.append(_event(n))
        if n % 7 == 0:
            messages.append(RelayedEvent(WorkerEventKind.LOST, longest, "ü" * REASON_LIMIT, MOMENT))
        if n % 50 == 0:
            messages.append(RelayedCommand(longest, command, "r" * 32, n, n % 100 == 0))
            messages.append(RelayedAck("r" * 32))
    relay = _relay(*messages)

    payloads = _drain(relay)

    assert _carried(relay, payloads) == messages
    assert all(len(payload.encode()) <= PAYLOAD_LIMIT for payload in payloads)
    assert relay.dropped == 0


def test_long_messages_after_short_ones_are_packed_in_fewer_and_short_ones_after_long_in_more() -> None:
    short = [_event(n) for n in range(2_000)]
    # Each with a reason of its own: a run of one, its reason written out in full.
    long = [_event(n, reason=f"{n:03d}" + "ü" * (REASON_LIMIT - 3)) for n in range(400)]
    relay = _relay(*short, *long, *short)

    payloads = _drain(relay)

    assert _carried(relay, payloads) == [*short, *long, *short]
    assert all(len(payload) <= PAYLOAD_LIMIT for payload in payloads)
    counts = [_count(p) for p in payloads]
    assert max(counts) <= MOST_PER_PAYLOAD
    # The estimate followed the messages' sizes down, and up again: the short ones after the long ones fill
    # their payloads as full as those before them.
    assert min(counts[3:-1]) < counts[3] == counts[-2]


def test_short_messages_ahead_of_long_ones_still_fill_half_a_payload() -> None:
    # Shrunk in proportion to the whole window (long ones included), the count would leave a few short ones
    # in a payload nearly empty; it is looked for between that and the count found too many.
    short = [_event(n) for n in range(300)]
    long = [_event(n, reason=f"{n:03d}" + "ü" * (REASON_LIMIT - 3)) for n in range(100)]
    relay = _relay(*short, *long)
    relay._fits = 400  # as after full payloads of short ones

    first, count = relay._pack()

    assert 2 * len(first) >= PAYLOAD_LIMIT >= len(first)
    assert _carried(relay, [first]) == short[:count]


def test_a_message_too_large_for_any_payload_is_dropped_counted_and_the_next_one_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    too_large = RelayedEvent(WorkerEventKind.LOST, "x" * PAYLOAD_LIMIT, "", MOMENT)
    relay = _relay(_event(1), too_large, _event(2))
    relay._fits = 3

    with caplog.at_level(logging.WARNING, logger="hodei.stores._postgres_relay"):
        first, count = relay._pack()  # three tried, too large; then fewer
        assert count == 1 and _carried(relay, [first]) == [_event(1)]
        relay._queue.popleft()
        assert relay._pack() == ("", 0)
        assert relay.dropped == 1
        assert _carried(relay, _drain(relay)) == [_event(2)]

    assert [r.message for r in caplog.records] == ["relay.message_too_large"]


def _hearing(relay: PostgresEventRelay) -> list[Relayed]:
    heard: list[Relayed] = []
    relay._receive = heard.append
    return heard


def test_its_own_payloads_heard_back_are_skipped_and_another_replicas_are_received() -> None:
    mine, other = _relay(_event(1), _event(2)), _relay(_event(3))
    heard = _hearing(mine)

    mine._heard(None, 0, "hodei_relay", _drain(mine)[0])
    assert heard == []
    mine._heard(None, 0, "hodei_relay", _drain(other)[0])
    assert heard == [_event(3)]


def test_a_replica_of_the_version_before_runs_is_still_heard() -> None:
    relay = _relay()
    heard = _hearing(relay)
    older = [["e", "registered", "worker-00001", "", MOMENT.isoformat()], ["a", "r" * 32]]

    relay._heard(None, 0, "hodei_relay", json.dumps({"o": "someone", "m": older}))

    assert heard == [_event(1), RelayedAck("r" * 32)]


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        '{"m": []}',
        '{"o": "someone", "m": 5}',
        '{"o": "someone", "m": [["z", 1], ["e"]]}',
        '{"o": "someone", "m": [["r", "registered", "", "2026-12-06T18:30:15+00:00", "w-1"]]}',
        '{"o": "someone", "m": [["r", "registered", "", "2026-12-06T18:30:15+00:00", ["w-1", null, ""]]]}',
        '{"o": "someone", "m": ' + "[" * 3_000 + "]" * 3_000 + "}",
        '{"o":"' + "a" * 12 + '","m":[]}',
    ],
)
def test_what_no_replica_sent_is_logged_short_and_nothing_is_received(
    payload: str, caplog: pytest.LogCaptureFixture
) -> None:
    relay = _relay()
    heard = _hearing(relay)

    with caplog.at_level(logging.WARNING, logger="hodei.stores._postgres_relay"):
        relay._heard(None, 0, "hodei_relay", payload)

    assert heard == []
    if payload.startswith('{"o":"aaaa'):
        assert caplog.records == []  # empty, from a replica: nothing to do
    else:
        assert {r.message for r in caplog.records} == {"relay.unreadable"}
        assert all(len(str(getattr(r, "error", ""))) <= 200 for r in caplog.records)


class _SendingFails:
    """A sending connection that breaks under the call; while it is in flight, more is published."""

    def __init__(self, relay: PostgresEventRelay, meanwhile: list[Relayed]) -> None:
        self.relay, self.meanwhile = relay, meanwhile
        self.terminated = asyncio.Event()

    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        self.terminated.set()

    async def execute(self, *_args: object) -> None:
        for message in self.meanwhile:
            self.relay.publish(message)
        raise OSError("the connection broke")


async def test_messages_sent_again_after_a_broken_send_go_first_and_what_no_longer_fits_is_counted() -> None:
    relay = PostgresEventRelay("postgresql://127.0.0.1:1/none", queue_limit=3, retry_delay=3600)
    sent, meanwhile = [_event(1), _event(2)], [_event(3), _event(4), _event(5)]
    relay._queue.extend(sent)
    relay._fits = 2  # both go in the payload that fails
    failing = _SendingFails(relay, meanwhile)
    relay._sending = failing  # type: ignore[assignment]
    sender = asyncio.create_task(relay._send())
    try:
        async with asyncio.timeout(5):
            await failing.terminated.wait()  # the messages go back in the same step: they are in by now
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

    assert list(relay._queue) == [_event(1), _event(2), _event(3)]
    # Published while the queue was empty, then pushed off its end by the two sent again.
    assert relay.dropped == 2


class _SendingWorks:
    """A sending connection whose first send has more published while it is in flight, after the queue emptied."""

    def __init__(self, relay: PostgresEventRelay, meanwhile: list[Relayed]) -> None:
        self.relay, self.meanwhile = relay, meanwhile
        self.payloads: list[str] = []

    def is_closed(self) -> bool:
        return False

    async def execute(self, _query: str, _channel: str, payload: str) -> None:
        self.payloads.append(payload)
        while self.meanwhile:
            self.relay.publish(self.meanwhile.pop(0))
        await asyncio.sleep(0)


async def test_what_is_published_while_a_send_is_in_flight_is_sent_next_and_the_relay_goes_idle() -> None:
    relay = PostgresEventRelay("postgresql://127.0.0.1:1/none")
    meanwhile = [_event(2), _event(3)]
    working = _SendingWorks(relay, list(meanwhile))
    relay._sending = working  # type: ignore[assignment]
    sender = asyncio.create_task(relay._send())
    try:
        await asyncio.sleep(0)  # the sender's first step: it finds the queue empty, and waits to be woken
        relay.publish(_event(1))  # into the empty queue: the sender is woken
        await wait_until(lambda: relay._idle.is_set() and len(working.payloads) == 2)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

    assert _carried(relay, working.payloads) == [_event(1), *meanwhile]


def test_a_queue_must_hold_one_message_at_least() -> None:
    with pytest.raises(ValueError, match="queue_limit must be at least 1, got 0"):
        PostgresEventRelay("postgresql://127.0.0.1:1/none", queue_limit=0)
