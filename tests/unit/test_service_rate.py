"""ETAs divide the jobs ahead by the rate a model's slots were seen to serve them at while they waited."""

from __future__ import annotations

from scheduler import rules


def test_a_backlogged_models_rate_is_its_completions_per_second() -> None:
    rate = rules.ServiceRate(tau_s=10.0)
    rate.observe(0.0, 0, backlogged=True)
    for second in range(1, 61):
        rate.observe(float(second), 5 * second, backlogged=True)
    assert rate.per_s is not None and abs(rate.per_s - 5.0) < 1e-6


def test_an_idle_stretch_is_not_counted_as_slow_service() -> None:
    rate = rules.ServiceRate(tau_s=10.0)
    rate.observe(0.0, 0, backlogged=True)
    rate.observe(1.0, 4, backlogged=True)
    rate.observe(300.0, 10, backlogged=False)  # nothing waited: arrivals, not capacity
    rate.observe(301.0, 14, backlogged=True)
    assert rate.per_s == 4.0


def test_samples_shorter_than_a_second_accumulate() -> None:
    rate = rules.ServiceRate()
    rate.observe(0.0, 0, backlogged=True)
    rate.observe(0.3, 3, backlogged=True)
    assert rate.per_s is None
    rate.observe(1.5, 6, backlogged=True)
    assert rate.per_s == 4.0


def test_an_observed_rate_never_exceeds_what_the_slots_can_do() -> None:
    assert rules.estimated_seconds(0, 1, 2.0, 100.0) == rules.estimated_seconds(0, 1, 2.0)
    assert rules.estimated_seconds(9, 4, 0.0, 50.0) == round((9 + 4 / 5) / 50.0, 3)
