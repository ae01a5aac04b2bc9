"""The agent's heartbeat metronome: each heartbeat is due one interval after the previous one was due."""

from __future__ import annotations

import pytest

from hodei.agent._agent import next_beat


@pytest.mark.parametrize("now", [10.0, 10.3, 14.9, 15.0])
def test_a_heartbeat_sent_late_keeps_the_next_one_on_the_beat(now: float) -> None:
    # Due at 10 s, every 5 s: however late within the interval it was sent, the next is due at 15 s.
    assert next_beat(10.0, now, 5.0) == 15.0


def test_the_beats_of_a_slow_sender_do_not_drift() -> None:
    due, sent = 0.0, []
    for _ in range(100):
        now = due + 0.04  # every heartbeat takes 40 ms to send
        sent.append(now)
        due = next_beat(due, now, 5.0)

    assert sent[-1] == pytest.approx(99 * 5.0 + 0.04)  # not 99 * 5.04


def test_an_agent_more_than_an_interval_behind_counts_from_now_rather_than_catching_up() -> None:
    assert next_beat(10.0, 15.5, 5.0) == 20.5
