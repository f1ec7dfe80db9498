"""One-Euro filter and ease-to-neutral against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from realtime.filters import MotionSmoother, OneEuroFilter, alpha, ease_toward, strength_to_params


def test_alpha_formula() -> None:
    # tau = 1 / (2 pi fc); alpha = 1 / (1 + tau / dt): fc = 1 Hz at 10 Hz sampling
    r = 2 * math.pi * 1.0 * 0.1
    assert alpha(1.0, 0.1) == pytest.approx(r / (1 + r))
    assert alpha(1.0, 0.1) == pytest.approx(0.385869, abs=1e-6)


def test_first_sample_passes_through_then_low_pass() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0, d_cutoff=1.0)
    x0 = np.array([[1.0, -2.0], [3.0, 0.5]])
    np.testing.assert_array_equal(f(x0, 0.0), x0)
    x1 = x0 + 1.0
    a = 0.385869  # alpha(1 Hz, 0.1 s)
    np.testing.assert_allclose(f(x1, 0.1), x0 + a * 1.0, atol=1e-6)
    # third step: the estimate moves a further alpha of the remaining gap
    np.testing.assert_allclose(f(x1, 0.2), x0 + 1.0 - (1 - a) ** 2, atol=1e-6)


def test_beta_raises_cutoff_with_speed() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=0.5, d_cutoff=2.0)
    f(np.array([0.0]), 0.0)
    out = f(np.array([10.0]), 0.1)
    dx = 10.0 / 0.1
    dx_hat = alpha(2.0, 0.1) * dx  # previous derivative estimate is 0
    cutoff = 1.0 + 0.5 * dx_hat
    assert out[0] == pytest.approx(alpha(cutoff, 0.1) * 10.0, rel=1e-9)
    assert out[0] > alpha(1.0, 0.1) * 10.0  # faster than the beta = 0 filter


def test_element_wise_cutoff_and_reset() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=1.0)
    f(np.zeros(2), 0.0)
    out = f(np.array([0.01, 100.0]), 1 / 30)
    # the fast element follows much more closely (relative to its step) than the slow one
    assert out[1] / 100.0 > 0.9 > out[0] / 0.01
    f.reset()
    np.testing.assert_array_equal(f(np.array([5.0, 6.0]), 7.0), [5.0, 6.0])


def test_strength_zero_is_raw_and_mapping_is_monotonic() -> None:
    values = {"yaw": np.array([3.0]), "exp": np.full((21, 3), 0.02)}
    s = MotionSmoother(0.0, {"yaw": 100.0, "exp": 0.5})
    s(values, 0.0)
    moved = {"yaw": np.array([9.0]), "exp": np.full((21, 3), 0.05)}
    out = s(moved, 0.033)
    assert out["yaw"] is moved["yaw"] and out["exp"] is moved["exp"]
    weak, strong = strength_to_params(0.1, 1.0), strength_to_params(0.9, 1.0)
    assert weak[0] == pytest.approx(10 ** 0.8) and strong[0] == pytest.approx(10 ** -0.8)
    assert strength_to_params(0.5, 100.0) == pytest.approx((1.0, 0.02))
    with pytest.raises(ValueError, match=r"smoothing strength must be between 0 and 1, got 1.5"):
        MotionSmoother(1.5, {})


def test_smoother_filters_each_name() -> None:
    s = MotionSmoother(0.5, {"yaw": 100.0})
    s({"yaw": np.array([0.0]), "t": np.array([1.0])}, 0.0)
    out = s({"yaw": np.array([10.0]), "t": np.array([2.0])}, 0.1)
    assert 0.0 < out["yaw"][0] < 10.0
    assert out["t"][0] == 2.0  # no unit given: passes through


def test_ease_toward_halves_gap_per_half_life() -> None:
    x = np.array([8.0, -4.0])
    np.testing.assert_allclose(ease_toward(x, np.zeros(2), 0.25, half_life=0.25), [4.0, -2.0])
    two_steps = ease_toward(ease_toward(x, np.ones(2), 0.1), np.ones(2), 0.1)
    np.testing.assert_allclose(two_steps, ease_toward(x, np.ones(2), 0.2))
    with pytest.raises(ValueError, match="half_life must be > 0 s, got 0"):
        ease_toward(x, x, 0.1, half_life=0)
