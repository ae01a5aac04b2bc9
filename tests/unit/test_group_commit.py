"""GroupCommit: writes that arrive during a commit share the next one; each caller gets its own outcomes."""

from __future__ import annotations

import asyncio

import pytest

from hodei.errors import StoreError, StoreUnavailable
from hodei.stores._group import GroupCommit
from tests.helpers import wait_until


class Transactions:
    """The store's transaction as the unit under test sees it: records every group, can be held or fail."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.two_running = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.refuse: set[str] = set()
        self.unavailable = False

    async def commit(self, records: list[str]) -> list[str]:
        self.groups.append(list(records))
        self.entered.set()
        if len(self.groups) == 2:
            self.two_running.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.unavailable:
            raise StoreUnavailable("the registry store cannot be written now")
        if bad := self.refuse.intersection(records):
            raise StoreError(f"cannot write {sorted(bad)}")
        return [f"stored {record}" for record in records]


def group_commit(transactions: Transactions, **bounds: float) -> GroupCommit[str, str]:
    return GroupCommit(transactions.commit, size=len, **bounds)  # type: ignore[arg-type]


async def test_a_write_on_an_idle_store_is_committed_alone_at_once() -> None:
    transactions = Transactions()
    groups = group_commit(transactions)
    assert await groups.write(["a", "b"]) == ["stored a", "stored b"]
    assert transactions.groups == [["a", "b"]]
    assert groups.groups == 1


async def test_writing_nothing_is_answered_at_once_without_a_transaction() -> None:
    transactions = Transactions()
    groups = group_commit(transactions)
    assert await groups.write([]) == []
    assert (transactions.groups, groups.groups, groups.commits) == ([], 0, 0)


async def test_writes_that_arrive_during_a_commit_share_the_next_one_and_each_gets_its_own_outcomes() -> None:
    transactions = Transactions()
    transactions.gate = asyncio.Event()
    groups = group_commit(transactions)
    first = asyncio.create_task(groups.write(["w0"]))
    await transactions.entered.wait()
    later = [asyncio.create_task(groups.write([f"w{n}", f"w{n}-again"])) for n in range(1, 11)]
    await asyncio.sleep(0)  # every later write is queued behind the running commit
    transactions.gate.set()
    assert await first == ["stored w0"]
    for n, task in enumerate(later, start=1):
        assert await task == [f"stored w{n}", f"stored w{n}-again"]
    assert transactions.groups == [["w0"], [r for n in range(1, 11) for r in (f"w{n}", f"w{n}-again")]]


async def test_a_group_is_bounded_by_records_and_by_bytes_but_always_takes_one_whole_write() -> None:
    transactions = Transactions()
    transactions.gate = asyncio.Event()
    groups = group_commit(transactions, max_records=4, max_bytes=1000)
    first = asyncio.create_task(groups.write(["held"]))
    await transactions.entered.wait()
    writes = [asyncio.create_task(groups.write([f"r{n}", f"s{n}"])) for n in range(4)]
    huge = asyncio.create_task(groups.write(["x" * 5000]))  # over max_bytes alone: it still gets written
    small = asyncio.create_task(groups.write(["y"]))
    await asyncio.sleep(0)
    transactions.gate.set()
    await asyncio.gather(first, *writes, huge, small)
    assert transactions.groups == [
        ["held"],
        ["r0", "s0", "r1", "s1"],
        ["r2", "s2", "r3", "s3"],
        ["x" * 5000],
        ["y"],
    ]


async def test_one_bad_write_in_a_group_fails_only_its_caller() -> None:
    transactions = Transactions()
    transactions.gate = asyncio.Event()
    groups = group_commit(transactions)
    first = asyncio.create_task(groups.write(["held"]))
    await transactions.entered.wait()
    good = [asyncio.create_task(groups.write([f"good-{n}"])) for n in range(3)]
    bad = asyncio.create_task(groups.write(["bad"]))
    transactions.refuse = {"bad"}
    await asyncio.sleep(0)
    transactions.gate.set()
    assert await first == ["stored held"]
    assert [await task for task in good] == [["stored good-0"], ["stored good-1"], ["stored good-2"]]
    with pytest.raises(StoreError, match=r"cannot write \['bad'\]"):
        await bad
    # The group failed whole, then each of its writes was tried alone.
    assert transactions.groups[1] == ["good-0", "good-1", "good-2", "bad"]
    assert transactions.groups[2:] == [["good-0"], ["good-1"], ["good-2"], ["bad"]]
    assert (groups.groups, groups.commits) == (6, 4)  # tried; committed: "held" and each good one alone


async def test_a_store_nobody_can_write_fails_the_whole_group_at_once_without_trying_each_alone() -> None:
    transactions = Transactions()
    transactions.gate = asyncio.Event()
    groups = group_commit(transactions)
    first = asyncio.create_task(groups.write(["held"]))
    await transactions.entered.wait()
    later = [asyncio.create_task(groups.write([f"w{n}"])) for n in range(3)]
    transactions.unavailable = True
    await asyncio.sleep(0)
    transactions.gate.set()
    for task in (first, *later):
        with pytest.raises(StoreUnavailable):
            await task
    assert transactions.groups == [["held"], ["w0", "w1", "w2"]]
    assert (groups.groups, groups.commits) == (2, 0)


async def test_a_caller_cancelled_while_queued_is_not_written() -> None:
    transactions = Transactions()
    transactions.gate = asyncio.Event()
    groups = group_commit(transactions)
    first = asyncio.create_task(groups.write(["held"]))
    await transactions.entered.wait()
    gone = asyncio.create_task(groups.write(["gone"]))
    kept = asyncio.create_task(groups.write(["kept"]))
    await asyncio.sleep(0)
    gone.cancel()
    transactions.gate.set()
    assert await kept == ["stored kept"]
    await first
    assert transactions.groups == [["held"], ["kept"]]


async def test_closing_cancels_the_writes_still_queued() -> None:
    transactions = Transactions()
    transactions.gate = asyncio.Event()
    groups = group_commit(transactions)
    running = asyncio.create_task(groups.write(["held"]))
    await transactions.entered.wait()
    queued = asyncio.create_task(groups.write(["queued"]))
    await asyncio.sleep(0)
    await groups.aclose()
    for task in (running, queued):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert transactions.groups == [["held"]]


async def test_several_groups_may_be_in_flight_when_the_store_allows_it() -> None:
    transactions = Transactions()
    transactions.gate = asyncio.Event()
    groups = group_commit(transactions, in_flight=2)
    first = asyncio.create_task(groups.write(["a"]))
    await transactions.entered.wait()
    second = asyncio.create_task(groups.write(["b"]))
    await transactions.two_running.wait()
    third = asyncio.create_task(groups.write(["c"]))
    await asyncio.sleep(0)
    assert transactions.groups == [["a"], ["b"]]  # two commits running; the third write waits for one of them
    transactions.gate.set()
    assert [await first, await second, await third] == [["stored a"], ["stored b"], ["stored c"]]
    assert transactions.groups == [["a"], ["b"], ["c"]]


def test_in_flight_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="in_flight must be at least 1, got 0"):
        GroupCommit(Transactions().commit, size=len, in_flight=0)


# -- gathering: under load, a group waits a little for more ----------------------------------------------


async def _gathering(groups: GroupCommit[str, str], committers: int = 1) -> None:
    await wait_until(lambda: len(groups._gathering) == committers, interval=0.001)


async def _under_load(transactions: Transactions, groups: GroupCommit[str, str]) -> asyncio.Task[list[str]]:
    """A first write whose commit is held, a second queued behind it, then the commit let go: the committer
    goes on to the second write (returned), under load."""
    transactions.gate = asyncio.Event()
    first = asyncio.create_task(groups.write(["a"]))
    await transactions.entered.wait()
    second = asyncio.create_task(groups.write(["b"]))
    await asyncio.sleep(0)
    transactions.gate.set()
    assert await first == ["stored a"]
    return second


async def test_a_write_on_an_idle_store_does_not_wait_to_gather() -> None:
    transactions = Transactions()
    groups = group_commit(transactions, gather=3600)
    async with asyncio.timeout(5):
        assert await groups.write(["alone"]) == ["stored alone"]
        assert await groups.write(["later", "alone"]) == ["stored later", "stored alone"]
    assert transactions.groups == [["alone"], ["later", "alone"]]


async def test_under_load_the_next_group_waits_until_enough_records_are_queued() -> None:
    transactions = Transactions()
    groups = group_commit(transactions, gather=3600, gather_records=5)
    second = await _under_load(transactions, groups)
    await _gathering(groups)
    assert transactions.groups == [["a"]]  # "b" waits for more

    more = [asyncio.create_task(groups.write([f"c{n}", f"d{n}"])) for n in range(2)]
    async with asyncio.timeout(5):
        assert await second == ["stored b"]
        assert [await task for task in more] == [["stored c0", "stored d0"], ["stored c1", "stored d1"]]
    assert transactions.groups == [["a"], ["b", "c0", "d0", "c1", "d1"]]
    assert not groups._gathering


async def test_under_load_a_group_starts_after_gather_seconds_with_what_it_has() -> None:
    transactions = Transactions()
    groups = group_commit(transactions, gather=0.05, gather_records=1000)
    loop = asyncio.get_running_loop()
    started = loop.time()  # before the first commit ends, so at least the gather time before "b" is committed
    second = await _under_load(transactions, groups)
    async with asyncio.timeout(5):
        assert await second == ["stored b"]
    assert loop.time() - started >= 0.05 - 0.001
    assert transactions.groups == [["a"], ["b"]]
    assert not groups._gathering


async def test_closing_while_a_group_gathers_cancels_its_writes() -> None:
    transactions = Transactions()
    groups = group_commit(transactions, gather=3600)
    second = await _under_load(transactions, groups)
    await _gathering(groups)
    await groups.aclose()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert transactions.groups == [["a"]]
    assert not groups._gathering


async def test_two_committers_gathering_are_both_told_when_enough_is_queued() -> None:
    transactions = Transactions()
    transactions.gate = asyncio.Event()
    groups = group_commit(transactions, in_flight=2, gather=3600, gather_records=3)
    firsts = [asyncio.create_task(groups.write(["a"]))]
    await transactions.entered.wait()
    firsts.append(asyncio.create_task(groups.write(["b"])))
    await transactions.two_running.wait()
    queued = [asyncio.create_task(groups.write([name])) for name in ("c", "d")]
    await asyncio.sleep(0)
    transactions.gate.set()
    assert [await task for task in firsts] == [["stored a"], ["stored b"]]
    await _gathering(groups, committers=2)
    committers = set(groups._committers)
    assert transactions.groups == [["a"], ["b"]]

    last = asyncio.create_task(groups.write(["e"]))
    async with asyncio.timeout(5):
        assert [await task for task in [*queued, last]] == [["stored c"], ["stored d"], ["stored e"]]
    assert transactions.groups == [["a"], ["b"], ["c", "d", "e"]]
    assert not groups._gathering
    # The other committer found nothing left and stopped cleanly.
    await wait_until(lambda: all(committer.done() for committer in committers))
    assert [committer.exception() for committer in committers] == [None, None]
    assert not groups._committers


async def _held_then_released(transactions: Transactions, first: asyncio.Task[list[str]]) -> None:
    """Let the held commit go, holding the next one in its turn."""
    held, transactions.gate = transactions.gate, asyncio.Event()
    assert held is not None
    held.set()
    await first


async def test_with_gather_as_last_a_group_waits_for_those_waiting_and_as_many_as_the_last_one_answered() -> (
    None
):
    transactions = Transactions()
    groups = group_commit(transactions, gather=3600, gather_records=1000, gather_as_last=True)
    transactions.gate = asyncio.Event()
    first = asyncio.create_task(groups.write(["a"]))
    await transactions.entered.wait()
    second = asyncio.create_task(groups.write(["b"]))
    await asyncio.sleep(0)
    await _held_then_released(transactions, first)
    # "b" waited through "a"'s commit, which answered one caller: it waits for one more (1 + 1).
    await _gathering(groups)
    assert transactions.groups == [["a"]]
    third = asyncio.create_task(groups.write(["c", "c2"]))
    await wait_until(lambda: len(transactions.groups) == 2)
    assert transactions.groups[1] == ["b", "c", "c2"]
    transactions.gate.set()
    async with asyncio.timeout(5):
        assert [await second, await third] == [["stored b"], ["stored c", "stored c2"]]
        # Nobody was waiting as that commit ended: the next write, alone, does not wait.
        assert await groups.write(["d"]) == ["stored d"]
    assert transactions.groups == [["a"], ["b", "c", "c2"], ["d"]]
    assert not groups._gathering


async def test_with_gather_as_last_a_group_waits_for_gather_records_at_most() -> None:
    transactions = Transactions()
    groups = group_commit(transactions, gather=3600, gather_records=2, gather_as_last=True)
    transactions.gate = asyncio.Event()
    first = asyncio.create_task(groups.write(["a"]))
    await transactions.entered.wait()
    queued = [asyncio.create_task(groups.write([name])) for name in ("b", "c")]
    await asyncio.sleep(0)
    await _held_then_released(transactions, first)
    # Two waiting and one answered would want three: two are enough, and they start at once.
    await wait_until(lambda: len(transactions.groups) == 2)
    assert transactions.groups == [["a"], ["b", "c"]]
    transactions.gate.set()
    async with asyncio.timeout(5):
        assert [await task for task in queued] == [["stored b"], ["stored c"]]
    assert not groups._gathering
