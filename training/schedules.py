"""Schedules of the training loop: eps ramp, CROWN-IBP beta, kappa, learning-rate decay.

All schedules are pure functions of the global step (or epoch), so the schedule position is
just the step counter saved in a checkpoint, and a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmoothRamp:
    """eps from 0 to ``target`` (Shi et al. 2021): polynomial, then linear.

    Over ``length`` steps after ``start``: eps = a t^p for t < m = mid * length, and the
    tangent line beyond m, with a chosen so that eps reaches ``target`` at t = length. The
    two pieces meet with equal value and slope, so the ramp has no kink. ``length`` 0 means
    no ramp (the target from ``start`` on).
    """

    target: float
    start: int
    length: int
    power: float = 4.0
    mid: float = 0.25

    def __call__(self, step: int) -> float:
        t = step - self.start
        if t < 0:
            return 0.0
        if self.length <= 0 or t >= self.length:
            return self.target
        m = max(self.mid * self.length, 1e-12)
        p = self.power
        a = self.target / (m**p + p * m ** (p - 1) * (self.length - m))
        if t < m:
            return a * t**p
        return a * m**p + a * p * m ** (p - 1) * (t - m)

    def done(self, step: int) -> bool:
        return step - self.start >= self.length


@dataclass(frozen=True)
class LinearRamp:
    """A value moving linearly from ``begin`` to ``end`` over [start, start + length)."""

    begin: float
    end: float
    start: int
    length: int

    def __call__(self, step: int) -> float:
        t = step - self.start
        if self.length <= 0:
            return self.end if t >= 0 else self.begin
        frac = min(max(t / self.length, 0.0), 1.0)
        return self.begin + (self.end - self.begin) * frac


def step_decay_factor(epoch: int, milestones: tuple[int, ...], factor: float) -> float:
    """Multiplier on the base learning rate at ``epoch`` (0-based): factor^(#milestones passed).

    A milestone k means "decay after epoch k", i.e. from the (k+1)-th epoch on (0-based k).
    """
    passed = sum(1 for m in milestones if epoch >= m)
    return factor**passed
