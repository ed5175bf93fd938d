"""The queue policy on its own: aging, affinity and its bound, size matching, concurrency limits."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.policy import FifoPolicy, PolicyConfig, SeedsNaivePolicy, Slot, TesseraPolicy, Waiting

ALICE, BOB = uuid.uuid4(), uuid.uuid4()
NO_LIMIT = lambda _user: 1_000_000  # noqa: E731


def waiting(
    order: int, *, tier: int = 0, model: str = "sdxl", user: uuid.UUID = ALICE, at: float = 0.0, size: int = 1024
) -> Waiting:
    return Waiting(
        job_id=uuid.uuid4(), user_id=user, model=model, priority=tier, order=order, enqueued_at=at, size=size
    )


GPU = Slot(worker_id="gpu0", models=frozenset({"sdxl", "flux-dev"}), loaded=frozenset({"sdxl"}))


@settings(max_examples=100, deadline=None)
@given(
    admin_backlog=st.integers(1, 500),
    step=st.floats(1, 600),
    starve=st.floats(60, 3600),
    starve_step=st.floats(60, 1200),
)
def test_a_free_job_is_never_starved_by_a_higher_tier(
    admin_backlog: int, step: float, starve: float, starve_step: float
) -> None:
    """However many admin jobs keep arriving, a free job starts within `starvation_s` plus one
    `starvation_step_s` (by then it outranks every admin job that arrived after it), plus the admin
    jobs that were queued with it."""
    policy = TesseraPolicy(
        PolicyConfig(aging_step_s=step, affinity_hold_s=0, starvation_s=starve, starvation_step_s=starve_step)
    )
    for order in range(admin_backlog):
        policy.push(waiting(order, tier=3, at=0.0))
    free = waiting(admin_backlog, tier=0, user=BOB, at=0.0)
    policy.push(free)
    now, order = 0.0, admin_backlog + 1
    for _ in range(10_000):
        policy.push(waiting(order, tier=3, at=now))  # a fresh admin job every second
        order += 1
        pick = policy.pick(GPU, now, {}, NO_LIMIT)
        assert pick is not None
        if pick.job is free:
            assert now <= starve + starve_step + admin_backlog + 1  # one pick per simulated second
            return
        now += 1.0
    raise AssertionError("the free job never started")


def test_aging_lets_a_long_waiting_job_overtake_fresher_jobs_of_higher_tiers() -> None:
    policy = TesseraPolicy(PolicyConfig(aging_step_s=60, starvation_s=10_000))
    old_free = waiting(1, tier=0, user=BOB, at=0.0)
    fresh_pro = waiting(2, tier=2, at=130.0)
    policy.push(old_free)
    policy.push(fresh_pro)
    assert policy.pick(GPU, 100.0, {}, NO_LIMIT).job is fresh_pro  # type: ignore[union-attr]  # free: tier 1 now
    policy.push(waiting(3, tier=2, at=190.0))
    assert policy.pick(GPU, 190.0, {}, NO_LIMIT).job is old_free  # type: ignore[union-attr]  # free: tier 3 now


def test_affinity_prefers_the_loaded_model_within_a_tier() -> None:
    policy = TesseraPolicy(PolicyConfig(affinity_hold_s=30))
    older_other_model = waiting(1, tier=2, model="flux-dev", at=0)
    loaded_model = waiting(2, tier=2, model="sdxl", at=1)
    policy.push(older_other_model)
    policy.push(loaded_model)
    pick = policy.pick(GPU, 5.0, {}, NO_LIMIT)
    assert pick is not None and pick.job is loaded_model and "affinity" in pick.reason


@given(waited=st.floats(0, 1000), hold=st.floats(1, 120))
def test_affinity_keeps_a_higher_tier_waiting_no_longer_than_the_hold(waited: float, hold: float) -> None:
    policy = TesseraPolicy(PolicyConfig(aging_step_s=0, affinity_hold_s=hold))
    high = waiting(1, tier=3, model="flux-dev", at=0.0)
    low = waiting(2, tier=0, model="sdxl", at=waited)
    policy.push(high)
    policy.push(low)
    pick = policy.pick(GPU, waited, {}, NO_LIMIT)
    assert pick is not None
    assert pick.job is (low if waited < hold else high)


def test_a_worker_without_the_model_loaded_takes_the_best_job() -> None:
    policy = TesseraPolicy()
    fresh = Slot(worker_id="gpu1", models=frozenset({"sdxl", "flux-dev"}))
    high = waiting(2, tier=3, model="flux-dev")
    policy.push(waiting(1, tier=1))
    policy.push(high)
    assert policy.pick(fresh, 0.0, {}, NO_LIMIT).job is high  # type: ignore[union-attr]


def test_size_and_model_matching() -> None:
    policy = TesseraPolicy()
    big = waiting(1, tier=3, size=2048)
    small = waiting(2, tier=0, size=1024)
    other = waiting(3, tier=3, model="ltx-video")
    for job in (big, small, other):
        policy.push(job)
    small_gpu = Slot(worker_id="small", models=frozenset({"sdxl"}), max_resolution=1536)
    assert policy.pick(small_gpu, 0.0, {}, NO_LIMIT).job is small  # type: ignore[union-attr]
    assert policy.pick(small_gpu, 0.0, {}, NO_LIMIT) is None
    assert len(policy) == 2


def test_users_at_their_concurrency_limit_wait() -> None:
    policy = TesseraPolicy()
    mine = waiting(1, tier=3, user=ALICE)
    theirs = waiting(2, tier=0, user=BOB)
    policy.push(mine)
    policy.push(theirs)
    limits = {ALICE: 1, BOB: 1}
    pick = policy.pick(GPU, 0.0, {ALICE: 1}, limits.__getitem__)
    assert pick is not None and pick.job is theirs
    assert policy.pick(GPU, 0.0, {ALICE: 1, BOB: 1}, limits.__getitem__) is None


def test_removed_jobs_are_never_picked() -> None:
    for policy in (TesseraPolicy(), FifoPolicy(), SeedsNaivePolicy()):
        cancelled, kept = waiting(1, tier=3), waiting(2, tier=0)
        policy.push(cancelled)
        policy.push(kept)
        assert policy.remove(cancelled.job_id) is cancelled
        assert policy.pick(GPU, 0.0, {}, NO_LIMIT).job is kept  # type: ignore[union-attr]
        assert policy.pick(GPU, 0.0, {}, NO_LIMIT) is None


def test_baselines_do_what_they_say() -> None:
    fifo, seeds = FifoPolicy(), SeedsNaivePolicy()
    old_free, new_admin_other_model = waiting(1, tier=0), waiting(2, tier=3, model="flux-dev")
    for policy in (fifo, seeds):
        policy.push(old_free)
        policy.push(new_admin_other_model)
    assert fifo.pick(GPU, 0.0, {}, NO_LIMIT).job is old_free  # type: ignore[union-attr]
    # The seeds' algorithm takes the free job: it is the first whose model is loaded, tier by tier.
    assert seeds.pick(GPU, 0.0, {}, NO_LIMIT).job is old_free  # type: ignore[union-attr]
