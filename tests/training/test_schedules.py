"""Schedules: the smooth eps ramp is continuous, monotone and C1; lr step decay."""

from __future__ import annotations

import pytest

from absdsl.training.schedules import LinearRamp, SmoothRamp, step_decay_factor


def test_smooth_ramp_shape():
    ramp = SmoothRamp(target=0.3, start=10, length=100, power=4.0, mid=0.25)
    values = [ramp(s) for s in range(0, 130)]
    assert values[:11] == [0.0] * 11
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[110] == pytest.approx(0.3) and values[129] == 0.3
    assert ramp(35) < 0.3 * 25 / 100  # slower than linear at the start (polynomial part)
    # C1 at the junction: left and right slopes agree
    h = 1e-4
    left = (ramp(35) - ramp(35 - h)) / h
    right = (ramp(35 + h) - ramp(35)) / h
    assert left == pytest.approx(right, rel=1e-3)


def test_no_ramp_means_target_immediately():
    assert SmoothRamp(0.1, start=5, length=0)(5) == 0.1
    assert SmoothRamp(0.1, start=5, length=0)(4) == 0.0


def test_linear_ramp_and_step_decay():
    beta = LinearRamp(1.0, 0.0, start=0, length=10)
    assert [beta(s) for s in (-1, 0, 5, 10, 20)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert [step_decay_factor(e, (50, 60), 0.2) for e in (49, 50, 59, 60)] == pytest.approx(
        [1.0, 0.2, 0.2, 0.04])
