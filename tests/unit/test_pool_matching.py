"""Which job gets which worker: requirements, best fit, priority then FIFO, and no starvation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hodei.domain import WorkerCapabilities, WorkerRecord, WorkerType
from hodei.pools import Requirements, Waiter, best_fit, match


def worker(
    worker_id: str, cpu: int = 2, memory: int = 4096, *, gpu: int = 0, pool: str = "default", **labels: str
) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        worker_type=WorkerType.PROCESS,
        capabilities=WorkerCapabilities(cpu, memory, 0, gpu),
        labels=labels,
        pool=pool,
    )


@pytest.mark.parametrize(
    ("requirements", "fits"),
    [
        (Requirements(), True),
        (Requirements(pool="default"), True),
        (Requirements(pool="other"), False),
        (Requirements(cpu_cores=4, memory_mb=8192), True),
        (Requirements(cpu_cores=5), False),
        (Requirements(memory_mb=8193), False),
        (Requirements(gpu_count=1), False),
        (Requirements(labels={"os": "linux"}), True),
        (Requirements(labels={"os": "windows"}), False),
        (Requirements(labels={"arch": "arm64"}), False),
    ],
)
def test_a_worker_fits_when_pool_resources_and_every_label_match(
    requirements: Requirements, fits: bool
) -> None:
    assert requirements.fits(worker("w", 4, 8192, os="linux")) is fits


def test_the_best_fit_is_the_smallest_worker_that_fits_and_ties_go_to_the_lowest_id() -> None:
    workers = [
        worker("big", 16, 65536),
        worker("gpu", 4, 8192, gpu=1),
        worker("b-mid", 4, 8192),
        worker("a-mid", 4, 8192),
        worker("small", 1, 1024),
    ]

    assert best_fit(Requirements(cpu_cores=2), workers).worker_id == "a-mid"  # type: ignore[union-attr]
    assert best_fit(Requirements(gpu_count=1), workers).worker_id == "gpu"  # type: ignore[union-attr]
    assert best_fit(Requirements(cpu_cores=32), workers) is None


def test_waiters_are_served_by_priority_then_in_order_of_arrival() -> None:
    waiters = [
        Waiter("late-low", Requirements(), priority=0, seq=3),
        Waiter("early-low", Requirements(), priority=0, seq=1),
        Waiter("high", Requirements(), priority=5, seq=2),
    ]

    bound = match(waiters, [worker("w1"), worker("w2")])

    assert [(w.job_id, r.worker_id) for w, r in bound] == [("high", "w1"), ("early-low", "w2")]


def test_a_large_request_is_not_starved_by_later_small_ones() -> None:
    # Only the large worker frees up: the large request, first in line, gets it; the small ones keep waiting.
    large = Waiter("large", Requirements(cpu_cores=16), seq=1)
    smalls = [Waiter(f"small-{i}", Requirements(cpu_cores=1), seq=2 + i) for i in range(5)]

    bound = match([*smalls, large], [worker("big", 16, 65536)])

    assert [(w.job_id, r.worker_id) for w, r in bound] == [("large", "big")]


def test_small_requests_take_small_workers_and_leave_the_large_one_for_the_large_request() -> None:
    large = Waiter("large", Requirements(cpu_cores=8), seq=3)
    smalls = [Waiter("s1", Requirements(cpu_cores=1), seq=1), Waiter("s2", Requirements(cpu_cores=1), seq=2)]

    bound = match([large, *smalls], [worker("big", 8), worker("x1", 1), worker("x2", 1)])

    assert sorted((w.job_id, r.worker_id) for w, r in bound) == [("large", "big"), ("s1", "x1"), ("s2", "x2")]


def test_a_waiter_naming_a_pool_only_gets_a_worker_of_that_pool() -> None:
    bound = match([Waiter("j", Requirements(pool="gpu"))], [worker("a", pool="cpu"), worker("b", pool="gpu")])

    assert [(w.job_id, r.worker_id) for w, r in bound] == [("j", "b")]


@st.composite
def scenes(draw: st.DrawFn) -> tuple[list[Waiter], list[WorkerRecord]]:
    sizes = st.sampled_from([1, 2, 4, 8])
    workers = [
        worker(f"w{i}", draw(sizes), pool=draw(st.sampled_from(["a", "b"])))
        for i in range(draw(st.integers(0, 12)))
    ]
    waiters = [
        Waiter(
            f"j{i}",
            Requirements(cpu_cores=draw(sizes), pool=draw(st.sampled_from([None, "a", "b"]))),
            priority=draw(st.integers(0, 2)),
            seq=i,
        )
        for i in range(draw(st.integers(0, 12)))
    ]
    return waiters, workers


@settings(max_examples=300, deadline=None)
@given(scenes())
def test_no_worker_is_bound_twice_every_binding_fits_and_no_later_waiter_takes_what_an_earlier_one_could_use(
    scene: tuple[list[Waiter], list[WorkerRecord]],
) -> None:
    waiters, workers = scene

    bound = match(waiters, workers)

    taken = [r.worker_id for _, r in bound]
    assert len(taken) == len(set(taken))
    assert all(w.requirements.fits(r) for w, r in bound)
    order = sorted(waiters, key=lambda w: (-w.priority, w.seq))
    position = {w.job_id: i for i, w in enumerate(order)}
    unbound = [w for w in order if w.job_id not in {b.job_id for b, _ in bound}]
    for waiter in unbound:
        # A worker left free never fits a waiter left waiting, and no worker it fits went to a later waiter.
        assert not any(waiter.requirements.fits(r) for r in workers if r.worker_id not in taken)
        assert not any(
            waiter.requirements.fits(r) and position[b.job_id] > position[waiter.job_id] for b, r in bound
        )
