"""Causal smoothing of per-frame motion: the One-Euro filter (Casiez et al., CHI 2012) and an ease back to neutral.

A webcam's keypoint estimates jitter by a fraction of a degree every frame; a fixed low-pass filter removes the
jitter but lags fast head turns. The One-Euro filter raises its cutoff with the signal's speed, so it is smooth
when still and quick when moving. Every function takes numpy arrays of any shape and filters element-wise.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np


def alpha(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
    """Smoothing factor of a first-order low-pass at `cutoff` Hz sampled every `dt` s: 1 / (1 + tau / dt)."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter over arrays of a fixed shape; call it with each new sample and its timestamp (s)."""

    #: smallest step between timestamps; a repeated timestamp then barely moves the estimate instead of dividing by 0
    MIN_DT = 1e-6

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(
                f"One-Euro needs min_cutoff > 0, d_cutoff > 0 and beta >= 0, got {min_cutoff}, {d_cutoff}, {beta}"
            )
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next sample passes through unchanged."""
        self.x_hat: np.ndarray | None = None
        self.dx_hat: np.ndarray | None = None
        self.t_prev = 0.0

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x_hat is None or self.dx_hat is None or self.x_hat.shape != x.shape:
            self.x_hat, self.dx_hat, self.t_prev = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = max(t - self.t_prev, self.MIN_DT)
        dx = (x - self.x_hat) / dt
        self.dx_hat = self.dx_hat + alpha(self.d_cutoff, dt) * (dx - self.dx_hat)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx_hat)
        self.x_hat = self.x_hat + alpha(cutoff, dt) * (x - self.x_hat)
        self.t_prev = t
        return self.x_hat.copy()


def strength_to_params(strength: float, unit: float = 1.0) -> tuple[float, float]:
    """(min_cutoff Hz, beta) for a user-facing strength in (0, 1]; `unit` is the signal's typical speed per second.

    min_cutoff falls log-linearly from 10 Hz (barely filtered at 30 fps) to 0.1 Hz (very steady when still);
    beta is chosen so that moving at the typical speed lifts the cutoff by 2 Hz, which keeps fast turns responsive
    whatever the signal's units (degrees for pose, ~0.01 for expression deltas).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"smoothing strength must be in (0, 1] for a filter (0 means no filter), got {strength}")
    if unit <= 0:
        raise ValueError(f"unit (typical speed) must be > 0, got {unit}")
    return 10.0 ** (1.0 - 2.0 * strength), 2.0 / unit


class MotionSmoother:
    """One One-Euro filter per named motion array (e.g. pitch, yaw, roll, exp, t, scale) at one strength.

    strength 0 is a raw passthrough. `units` gives each name's typical speed (units per second) so one strength
    slider means the same amount of smoothing for every quantity.
    """

    def __init__(self, strength: float, units: Mapping[str, float]) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"smoothing strength must be between 0 and 1, got {strength}")
        self.strength = strength
        self.filters: dict[str, OneEuroFilter] = {}
        if strength > 0:
            for name, unit in units.items():
                min_cutoff, beta = strength_to_params(strength, unit)
                self.filters[name] = OneEuroFilter(min_cutoff, beta)

    def __call__(self, values: Mapping[str, np.ndarray], t: float) -> dict[str, np.ndarray]:
        """Filtered copies of `values`; names without a filter (or strength 0) pass through unchanged."""
        return {k: self.filters[k](v, t) if k in self.filters else v for k, v in values.items()}

    def reset(self) -> None:
        for f in self.filters.values():
            f.reset()


def ease_toward(current: np.ndarray, neutral: np.ndarray, dt: float, half_life: float = 0.25) -> np.ndarray:
    """Move `current` toward `neutral`, halving the gap every `half_life` s (used while no face is in view).

    Exponential easing is frame-rate independent: two steps of dt equal one step of 2*dt.
    """
    if half_life <= 0:
        raise ValueError(f"half_life must be > 0 s, got {half_life}")
    current = np.asarray(current, dtype=np.float64)
    keep = 0.5 ** (max(dt, 0.0) / half_life)
    return neutral + (current - neutral) * keep


class BoxSmoother:
    """Causal exponential smoothing of the driving box centre and size.

    The official driving crop averages the box over the whole clip, which a live stream cannot do; an
    exponential moving average is the causal stand-in. alpha is the weight of the newest box (1 = off).
    """

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"BoxSmoother alpha must be in (0, 1], got {alpha!r}")
        self.alpha = alpha
        self.state: np.ndarray | None = None  # (cx, cy, size)

    def update(self, box: np.ndarray) -> np.ndarray:
        """Blend a new (x1, y1, x2, y2) box into the running estimate and return the smoothed box."""
        x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
        obs = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1])
        self.state = obs if self.state is None else self.state + self.alpha * (obs - self.state)
        cx, cy, size = self.state
        return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])

    def reset(self) -> None:
        """Forget the history (face lost, or the user re-anchored)."""
        self.state = None
