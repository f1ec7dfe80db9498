"""Expression and pose editing (core/edit.py, core.motion's edit and source-video math) against the sheet
../shared/design/expression_editing.md, written out here independently of the code's table."""
from __future__ import annotations

import numpy as np
import pytest

from core.edit import EDIT_RANGES, NO_EDIT, Edit, edit_exp
from core.motion import (
    LIP_ARRAY,
    ABSOLUTE_EXP_MASK,
    ExpressionFriendly,
    Motion,
    absolute_motion,
    eye_input,
    edited_kp,
    kalman_smooth,
    lip_input,
    motion_multiplier,
    ratio_deltas,
    relative_motion,
    rotation,
    source_eye_target,
    transform_kp,
    video_parts,
)
from tests.conftest import FIXTURES
from tests.motion_inputs import random_info

X, Y, Z = 0, 1, 2
#: the sheet's table for a positive value v: control -> {(keypoint, axis): coefficient of v}
SHEET = {
    "smile": {(20, Y): -0.01, (14, Y): -0.02, (17, Y): 0.0065, (17, Z): 0.003, (13, Y): -0.00275, (16, Y): -0.00275,
              (3, Y): -0.0035, (7, Y): -0.0035},
    "wink": {(11, Y): 0.001, (13, Y): -0.0003, (17, X): 0.0003, (17, Y): 0.0003, (3, Y): -0.0003},
    "pouting": {(19, X): 1.0},
    "pursing": {(14, Y): 0.001, (3, Y): -0.0005, (7, Y): -0.0005, (17, Z): -0.0005},
    "grin": {(20, Z): -0.001, (20, Y): -0.001, (14, Y): -0.001},
    "lip_open": {(19, Y): 0.001, (19, Z): 0.0001, (17, Y): -0.0001},
    "move_x": {(5, X): -1.0},
    "move_y": {(5, Y): 1.0},
    "gaze_x": {(11, X): 0.0007, (15, X): 0.001},  # v > 0
    # v: -0.001 v, then b = -v/2 adds -0.001 b / 0.0003 b: net -0.0005 v on 11y, 15y and -0.00015 v on 13y, 16y
    "gaze_y": {(11, Y): -0.0005, (15, Y): -0.0005, (13, Y): -0.00015, (16, Y): -0.00015},
    "eyebrow": {(1, Y): 0.001, (2, Y): -0.001},  # v > 0
}
#: the negative branches of the piecewise controls
SHEET_NEGATIVE = {
    "gaze_x": {(11, X): 0.001, (15, X): 0.0007},
    "eyebrow": {(1, X): -0.001, (2, X): 0.001, (1, Y): 0.0003, (2, Y): -0.0003},
}


def expected_delta(table: dict[tuple[int, int], float], v: float) -> np.ndarray:
    delta = np.zeros((21, 3))
    for (k, axis), c in table.items():
        delta[k, axis] += c * v
    return delta


def sample_value(name: str, sign: float = 1.0) -> float:
    low, high = EDIT_RANGES[name]
    return 0.6 * (high if sign > 0 else low)


CASES = [(name, 1.0, SHEET[name]) for name in SHEET] + [(name, -1.0, SHEET_NEGATIVE[name]) for name in SHEET_NEGATIVE]


@pytest.mark.parametrize(("name", "sign", "table"), CASES, ids=[f"{c[0]}{'+' if c[1] > 0 else '-'}" for c in CASES])
def test_each_control_moves_exactly_the_sheets_entries_of_the_composed_x_d(name: str, sign: float, table) -> None:
    rng = np.random.default_rng(3)
    src, drv_info, ref_info = random_info(rng), random_info(rng), random_info(rng)
    drv, ref = Motion.from_kp_info(drv_info), Motion.from_kp_info(ref_info)
    v = sample_value(name, sign)
    plain = relative_motion(src, drv, ref)
    edited = relative_motion(src, drv, ref, edit=Edit(**{name: v}))
    scale_new = src.scale * drv.scale / ref.scale
    want = scale_new * expected_delta(table, v)
    np.testing.assert_allclose(edited - plain, want, atol=2e-6, rtol=0)
    touched = np.zeros((21, 3), bool)
    for k, axis in table:
        touched[k, axis] = True
    assert np.array_equal(edited[~touched], plain[~touched])  # every other entry is bit-identical
    assert np.abs(edited - plain)[touched].min() > 1e-6  # and each listed entry really moved
    # the same in absolute motion (source scale)
    np.testing.assert_allclose(absolute_motion(src, drv, edit=Edit(**{name: v})) - absolute_motion(src, drv),
                               src.scale * expected_delta(table, v), atol=2e-6, rtol=0)


def test_gaze_y_is_applied_in_the_official_two_steps() -> None:
    exp = edit_exp(np.zeros((21, 3), np.float32), Edit(gaze_y=40.0))
    step1 = np.float32(0) + np.float32(-0.001 * 40)
    assert exp[11, Y] == step1 + np.float32(-0.001 * -20) and exp[13, Y] == np.float32(0.0003 * -20)


@pytest.mark.parametrize("axis_name", ["head_pitch", "head_yaw", "head_roll"])
def test_head_offsets_turn_the_composed_rotation(axis_name: str) -> None:
    rng = np.random.default_rng(5)
    src, drv, ref = random_info(rng), Motion.from_kp_info(random_info(rng)), Motion.from_kp_info(random_info(rng))
    offset = {"head_pitch": (10, 0, 0), "head_yaw": (0, -20, 0), "head_roll": (0, 0, 12)}[axis_name]
    R_new = (drv.R @ ref.R.T) @ src.R
    R_edit = rotation(src.pitch + offset[0], src.yaw + offset[1], src.roll + offset[2]) @ src.R.T
    want = transform_kp(src.kp, R_edit @ R_new, src.exp + (drv.exp - ref.exp), src.scale * drv.scale / ref.scale,
                        src.t + (drv.t - ref.t))
    got = relative_motion(src, drv, ref, edit=Edit(**{axis_name: sum(offset)}))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - relative_motion(src, drv, ref)).max() > 1e-2


def test_move_z_scales_the_head() -> None:
    rng = np.random.default_rng(6)
    src, drv = random_info(rng), Motion.from_kp_info(random_info(rng))
    got = absolute_motion(src, drv, edit=Edit(move_z=1.2))
    exp_new = np.where(ABSOLUTE_EXP_MASK, drv.exp, src.exp)
    np.testing.assert_allclose(got, transform_kp(src.kp, drv.R, exp_new, src.scale * 1.2, drv.t), atol=1e-6)


@pytest.mark.parametrize("region", ["all", "exp", "pose", "lip", "eyes"])
def test_all_defaults_are_bit_identical_to_no_edit(region: str) -> None:
    """An Edit spelled out with every default value is the no-op: the composed x_d is the unedited formula's,
    bit for bit, in relative and absolute motion."""
    spelled = Edit(**{name: (1.0 if name == "move_z" else None if name.startswith("target") else 0.0)
                      for name in EDIT_RANGES})
    assert spelled.is_noop and spelled == NO_EDIT and not spelled.changed()
    rng = np.random.default_rng(7)
    src, drv, ref = random_info(rng), Motion.from_kp_info(random_info(rng)), Motion.from_kp_info(random_info(rng))
    pose = region in ("all", "pose")
    from core.motion import region_exp_mask

    exp_new = np.where(region_exp_mask(region), src.exp + (drv.exp - ref.exp), src.exp)
    by_hand = transform_kp(src.kp, (drv.R @ ref.R.T) @ src.R if pose else src.R, exp_new,
                           src.scale * (drv.scale / ref.scale) if region == "all" else src.scale,
                           src.t + (drv.t - ref.t) if pose else src.t)
    assert np.array_equal(relative_motion(src, drv, ref, region, spelled), by_hand)
    assert np.array_equal(absolute_motion(src, drv, region, spelled), absolute_motion(src, drv, region))


def test_ranges_are_the_official_sliders_and_are_enforced() -> None:
    assert EDIT_RANGES["smile"] == (-0.3, 1.3) and EDIT_RANGES["gaze_y"] == (-63.0, 63.0)
    assert EDIT_RANGES["lip_open"] == (-90.0, 120.0) and EDIT_RANGES["head_yaw"] == (-25.0, 25.0)
    assert EDIT_RANGES["move_z"] == (0.9, 1.2) and EDIT_RANGES["target_eye_ratio"] == (0.0, 0.8)
    with pytest.raises(ValueError, match=r"^smile must be between -0.3 and 1.3, got 2.0$"):
        Edit(smile=2.0)
    with pytest.raises(ValueError, match=r"^wink must be between 0 and 39, got -1$"):
        Edit(wink=-1)
    with pytest.raises(ValueError, match=r"^target_lip_ratio must be between 0 and 0.8, got 'x'$"):
        Edit(target_lip_ratio="x")  # type: ignore[arg-type]
    assert Edit.from_dict({"smile": 0.5, "unknown": 3}).changed() == {"smile": 0.5}


def test_still_edit_keeps_t_z_and_composes_r_as_the_official_demo() -> None:
    src = random_info(np.random.default_rng(8))
    R_new = (rotation(src.pitch, src.yaw + 10, src.roll) @ src.R.T) @ src.R
    want = 1.1 * src.scale * (src.kp @ R_new + edit_exp(src.exp, Edit(smile=0.4))) + src.t  # t_z included
    np.testing.assert_allclose(edited_kp(src, Edit(smile=0.4, head_yaw=10, move_z=1.1)), want, atol=1e-6)


def test_target_ratios_ask_the_retargeting_mlps() -> None:
    x_s = np.arange(63, dtype=np.float32).reshape(21, 3) / 100
    seen: dict[str, np.ndarray] = {}

    def mlp(name: str):
        def run(x: np.ndarray) -> np.ndarray:
            seen[name] = x
            return np.full((1, 63), 0.01 if name == "eye" else 0.1, np.float32)
        return run

    eyes = np.array([0.3, 0.32], np.float32)
    assert ratio_deltas(x_s, eyes, 0.05, NO_EDIT, mlp("eye"), mlp("lip")) is None and not seen
    delta = ratio_deltas(x_s, eyes, 0.05, Edit(target_eye_ratio=0.6, target_lip_ratio=0.4), mlp("eye"), mlp("lip"))
    np.testing.assert_allclose(delta, np.full((21, 3), 0.11), rtol=1e-6)
    assert np.array_equal(seen["eye"], eye_input(x_s, eyes, 0.6)) and np.array_equal(seen["lip"], lip_input(x_s, 0.05, 0.4))
    assert ratio_deltas(x_s, None, None, Edit(target_eye_ratio=0.6), mlp("eye"), mlp("lip")) is None  # no landmarks


def test_lip_array_is_the_official_one() -> None:
    assert LIP_ARRAY.shape == (21, 3) and LIP_ARRAY.dtype == np.float32
    official = FIXTURES / "official_constants" / "lip_array.npy"
    if not official.is_file():
        pytest.skip(f"{official} is absent (../shared)")
    assert np.array_equal(LIP_ARRAY, np.load(official).reshape(21, 3))


def test_kalman_smooth_is_the_random_walk_map_estimate() -> None:
    """The RTS smoother of a random walk equals the least-squares solution of its quadratic energy (prior on the
    first state, observations, steps); solved here directly as one linear system."""
    rng = np.random.default_rng(9)
    y = np.cumsum(rng.normal(0, 3e-3, (30, 4)), axis=0) + rng.normal(0, 1e-3, (30, 4))
    r, q, n = 3e-7, 1e-5, len(y)
    A = np.zeros((n, n))
    b = np.zeros((n, 4))
    A[0, 0] += 1.0  # prior N(y_0, 1)
    b[0] += y[0]
    for i in range(n):
        A[i, i] += 1 / r
        b[i] += y[i] / r
    for i in range(1, n):
        A[i, i] += 1 / q
        A[i - 1, i - 1] += 1 / q
        A[i, i - 1] -= 1 / q
        A[i - 1, i] -= 1 / q
    want = np.linalg.solve(A, b)
    got = kalman_smooth(y.astype(np.float32), r, q)
    assert got.dtype == np.float32 and got.shape == y.shape
    np.testing.assert_allclose(got, want, atol=2e-7)
    rough = kalman_smooth(y.astype(np.float32), 1e-3, q)  # a larger observation variance smooths more
    assert np.abs(np.diff(rough, 2, axis=0)).mean() < np.abs(np.diff(got, 2, axis=0)).mean() / 2


def test_motion_multiplier_is_the_ratio_of_hull_sizes() -> None:
    x = np.random.default_rng(10).uniform(-1, 1, (21, 3))
    assert motion_multiplier(x, 2 * x) == pytest.approx(2 ** -1.5)  # volume x8: sqrt -> 1/2.83
    friendly = ExpressionFriendly.from_first(x, 2 * x)
    np.testing.assert_allclose(friendly.scaled(2 * x + 0.1, 2 * x + 0.1), x + 0.1 * 2 ** -1.5, atol=1e-6)
    # an edit's offset is not scaled
    np.testing.assert_allclose(friendly.scaled(2 * x, 2 * x + 0.05), x + 0.05, atol=1e-6)


def test_video_parts_follow_the_official_source_video_rules() -> None:
    rng = np.random.default_rng(11)
    sources = [random_info(rng) for _ in range(6)]
    drivers = [Motion.from_kp_info(random_info(rng)) for _ in range(4)]  # shorter: stop at 4
    parts = video_parts(sources, drivers, relative=True, observation_variance=1e-12)  # ~no smoothing
    assert len(parts) == 4
    for i, (R, exp, scale, t) in enumerate(parts):
        src, drv = sources[i], drivers[i]
        want_exp = np.where(ABSOLUTE_EXP_MASK, src.exp + drv.exp - drivers[0].exp, src.exp)
        np.testing.assert_allclose(exp, want_exp, atol=1e-5)
        np.testing.assert_allclose(R, (drv.R @ drivers[0].R.T) @ src.R, atol=1e-5)
        assert scale == src.scale and np.array_equal(t, src.t)  # the source keeps its own scale and translation
    # a driving image: its exp against LIP_ARRAY, the source's own R, not smoothed
    (R, exp, _, _), *_ = video_parts(sources, drivers[:1], relative=True)
    assert np.array_equal(R, sources[0].R)
    assert np.array_equal(exp, np.where(ABSOLUTE_EXP_MASK, sources[0].exp + (drivers[0].exp - LIP_ARRAY), sources[0].exp))
    # absolute motion, region "pose": driving R (smoothed) and t, the source's exp
    R, exp, _, t = video_parts(sources, drivers, relative=False, region="pose")[2]
    assert np.array_equal(exp, sources[2].exp) and np.array_equal(t, drivers[2].t)
    np.testing.assert_allclose(R, drivers[2].R, atol=0.05)
    assert source_eye_target(np.array([0.1, 0.12])) == 0.39 and source_eye_target(np.array([0.3, 0.4])) == pytest.approx(0.35)
