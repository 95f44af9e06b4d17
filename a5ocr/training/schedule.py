"""The attack-radius schedule of certified training, by optimisation step.

eps stays 0 for ``warmup`` steps, then grows smoothly to ``eps_max`` over ``ramp`` steps:
a power curve (exponent ``beta``) up to ``mid`` of the ramp, then a straight line whose slope
matches the curve's at the switch (the shape of auto_LiRPA's "smoothed" scheduler that the
reference code used; written here from its description). Scheduling by step, not epoch,
keeps the ramp long enough whatever the batch size: a too-short ramp collapses the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpsSchedule:
    eps_max: float
    warmup: int
    ramp: int
    mid: float = 0.3
    beta: float = 4.0

    def __call__(self, step: int) -> float:
        """eps at optimisation step ``step`` (0-based)."""
        if self.eps_max <= 0:
            return 0.0
        t = step - self.warmup
        if t < 0:
            return 0.0  # the first ``warmup`` steps (0 .. warmup - 1)
        if self.ramp <= 0 or t >= self.ramp:
            return self.eps_max
        t_mid = self.mid * self.ramp
        # eps = a t^beta on [0, t_mid]; linear after, reaching eps_max at t = ramp with the same slope at t_mid.
        a = self.eps_max / (t_mid ** self.beta + self.beta * t_mid ** (self.beta - 1) * (self.ramp - t_mid))
        if t < t_mid:
            return a * t ** self.beta
        eps_mid = a * t_mid ** self.beta
        return min(self.eps_max, eps_mid + (self.eps_max - eps_mid) * (t - t_mid) / (self.ramp - t_mid))

    def mixing(self, step: int) -> float:
        """The paper's mixing factor f = (eps_max - eps) / eps_max (1 = all clean, 0 = all certified)."""
        if self.eps_max <= 0:
            return 1.0
        return (self.eps_max - self(step)) / self.eps_max
