"""The autoscaler's decision: desired size, never above max, waiting jobs first, idle workers let go."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hodei.domain import WorkerType
from hodei.pools import IdleWorker, PoolObservation, PoolSpec, ScalePlan, ScaleReason, plan_scale
from hodei.pools._spec import PoolKind


def dynamic(**fields: object) -> PoolSpec:
    base: dict[str, object] = {
        "min": 0,
        "max": 10,
        "warm": 0,
        "idle_timeout": 60.0,
        "max_provisioning": 10,
        "scale_up_cooldown": 0.0,
        "scale_down_cooldown": 0.0,
    }
    base.update(fields)
    return PoolSpec(name="p", kind=PoolKind.DYNAMIC, provider=WorkerType.PROCESS, **base)  # type: ignore[arg-type]


def idle(*since: float) -> tuple[IdleWorker, ...]:
    return tuple(IdleWorker(f"w{i}", t) for i, t in enumerate(since))


@pytest.mark.parametrize(
    ("spec", "observed", "plan"),
    [
        # scale from zero on a burst: every waiting job at once, up to max and max_provisioning
        (
            dynamic(max=50),
            PoolObservation(now=0, waiting=50),
            ScalePlan(desired=50, provision=10, reason=ScaleReason.WAITING_JOBS),
        ),
        (
            dynamic(max=5),
            PoolObservation(now=0, waiting=50),
            ScalePlan(desired=5, provision=5, reason=ScaleReason.WAITING_JOBS),
        ),
        # workers already coming are counted: nothing more while they suffice
        (dynamic(), PoolObservation(now=0, waiting=3, provisioning=3), ScalePlan(desired=3)),
        (
            dynamic(),
            PoolObservation(now=0, waiting=4, provisioning=3),
            ScalePlan(desired=4, provision=1, reason=ScaleReason.WAITING_JOBS),
        ),
        # at max (counting provisioning and leaving workers), nothing is provisioned
        (
            dynamic(max=4),
            PoolObservation(now=0, busy=2, provisioning=1, leaving=1, waiting=5),
            ScalePlan(desired=4, reason=ScaleReason.AT_MAX),
        ),
        (
            dynamic(max_provisioning=2),
            PoolObservation(now=0, provisioning=2, waiting=5),
            ScalePlan(desired=5, reason=ScaleReason.PROVISIONING_LIMIT),
        ),
        # warm and min top-ups
        (
            dynamic(warm=2),
            PoolObservation(now=0, busy=3),
            ScalePlan(desired=5, provision=2, reason=ScaleReason.WARM),
        ),
        (dynamic(min=2), PoolObservation(now=0), ScalePlan(desired=2, provision=2, reason=ScaleReason.MIN)),
        # the cooldown holds a warm top-up, never waiting jobs
        (
            dynamic(warm=2, scale_up_cooldown=30),
            PoolObservation(now=10, busy=3, last_scale_up=0),
            ScalePlan(desired=5, reason=ScaleReason.COOLDOWN),
        ),
        (
            dynamic(scale_up_cooldown=30),
            PoolObservation(now=10, waiting=1, last_scale_up=0),
            ScalePlan(desired=1, provision=1, reason=ScaleReason.WAITING_JOBS),
        ),
        # backoff after provisioning failures holds everything
        (
            dynamic(),
            PoolObservation(now=10, waiting=1, backoff_until=15),
            ScalePlan(desired=1, reason=ScaleReason.BACKOFF),
        ),
        (
            dynamic(),
            PoolObservation(now=15, waiting=1, backoff_until=15),
            ScalePlan(desired=1, provision=1, reason=ScaleReason.WAITING_JOBS),
        ),
        # idle workers go after idle_timeout, longest idle first, down to min
        (
            dynamic(),
            PoolObservation(now=100, idle=idle(50, 30, 10)),
            ScalePlan(desired=0, retire=("w2", "w1"), reason=ScaleReason.IDLE),
        ),
        (
            dynamic(min=2),
            PoolObservation(now=100, idle=idle(0, 0, 0)),
            ScalePlan(desired=2, retire=("w0",), reason=ScaleReason.IDLE),
        ),
        (
            dynamic(warm=1),
            PoolObservation(now=100, busy=1, idle=idle(0, 0)),
            ScalePlan(desired=2, retire=("w0",), reason=ScaleReason.IDLE),
        ),
        # never while a job waits, never within the scale-down cooldown
        (dynamic(), PoolObservation(now=100, idle=idle(0, 0), waiting=1), ScalePlan(desired=1)),
        (
            dynamic(max=1),
            PoolObservation(now=100, idle=idle(0), last_scale_up=90),
            ScalePlan(desired=0, retire=("w0",), reason=ScaleReason.IDLE),
        ),
        (
            dynamic(scale_down_cooldown=30),
            PoolObservation(now=100, idle=idle(0), last_scale_up=90),
            ScalePlan(desired=0, reason=ScaleReason.COOLDOWN),
        ),
        # a lowered max: the idle surplus goes at once, idle timeout or not
        (
            dynamic(max=2),
            PoolObservation(now=1, busy=2, idle=idle(0.5, 0.9)),
            ScalePlan(desired=2, retire=("w0", "w1"), reason=ScaleReason.ABOVE_MAX),
        ),
        # static: kept at size, replaced at once, surplus retired at once
        (
            PoolSpec.static("s", 3, provider=WorkerType.PROCESS),
            PoolObservation(now=0, busy=1, idle=idle(0)),
            ScalePlan(desired=3, provision=1, reason=ScaleReason.SIZE),
        ),
        (
            PoolSpec.static("s", 1, provider=WorkerType.PROCESS),
            PoolObservation(now=0, busy=1),
            ScalePlan(desired=1),
        ),
    ],
)
def test_the_plan_for_an_observation(spec: PoolSpec, observed: PoolObservation, plan: ScalePlan) -> None:
    assert plan_scale(spec, observed) == plan


observations = st.builds(
    PoolObservation,
    now=st.floats(0, 1000),
    busy=st.integers(0, 20),
    idle=st.lists(st.floats(0, 1000), max_size=20).map(lambda ts: idle(*ts)),
    provisioning=st.integers(0, 20),
    leaving=st.integers(0, 5),
    waiting=st.integers(0, 50),
    last_scale_up=st.none() | st.floats(0, 1000),
    last_scale_down=st.none() | st.floats(0, 1000),
    backoff_until=st.none() | st.floats(0, 1000),
)
specs = st.builds(
    dynamic,
    min=st.integers(0, 5),
    max=st.integers(5, 30),
    warm=st.integers(0, 5),
    idle_timeout=st.floats(0, 500),
    max_provisioning=st.integers(1, 10),
    scale_up_cooldown=st.floats(0, 100),
    scale_down_cooldown=st.floats(0, 100),
)


@settings(max_examples=1000, deadline=None)
@given(specs, observations)
def test_a_pool_never_grows_past_max_nor_shrinks_below_min_and_only_idle_workers_are_retired(
    spec: PoolSpec, observed: PoolObservation
) -> None:
    plan = plan_scale(spec, observed)

    existing = observed.busy + len(observed.idle) + observed.provisioning + observed.leaving
    assert plan.provision >= 0
    assert not (plan.provision and plan.retire)
    if plan.provision:
        assert existing + plan.provision <= spec.max
        assert observed.provisioning + plan.provision <= spec.max_provisioning
    assert set(plan.retire) <= {w.worker_id for w in observed.idle}
    assert len(set(plan.retire)) == len(plan.retire)
    if plan.retire and plan.reason is not ScaleReason.ABOVE_MAX:
        serving = observed.busy + len(observed.idle) + observed.provisioning
        assert serving - len(plan.retire) >= spec.min
        assert observed.waiting == 0
    # jobs waiting while the pool is below max and may provision are never left without a provision
    serving = observed.busy + len(observed.idle) + observed.provisioning
    if (
        observed.busy + observed.waiting > serving
        and existing < spec.max
        and observed.provisioning < spec.max_provisioning
        and (observed.backoff_until is None or observed.now >= observed.backoff_until)
    ):
        assert plan.provision > 0
