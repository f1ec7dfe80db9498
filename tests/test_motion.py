"""Per-frame motion math against hand-computed values from the formulas of spec sections 4-7."""
from __future__ import annotations

import numpy as np
import pytest

from core.motion import (
    KpInfo,
    Mlp,
    Motion,
    MotionError,
    absolute_motion,
    apply_stitching,
    compose_driving_kp,
    eye_input,
    headpose_deg,
    kp_delta,
    kp_info_from_outputs,
    lip_input,
    lip_zero_delta,
    lip_zero_input,
    lip_zero_needed,
    region_exp_mask,
    relative_motion,
    rotation,
    stitching_input,
    transform_kp,
)
from core.options import ProcessOptions
from tests.motion_inputs import random_info

# (Rz Ry Rx)^T written out by hand for single 90-degree turns; row-vector convention p' = p @ R
R_YAW_90 = np.array([[0, 0, -1], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
R_PITCH_90 = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float32)
R_ROLL_90 = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=np.float32)
EYE3 = np.eye(3, dtype=np.float32)


def peaked(*bins: int) -> np.ndarray:
    """Logits whose softmax is (to float precision) uniform over `bins` and zero elsewhere."""
    z = np.zeros((1, 66), dtype=np.float32)
    z[0, list(bins)] = 200.0
    return z


def plain_info(kp: np.ndarray | None = None, exp: np.ndarray | None = None) -> KpInfo:
    """A source with identity pose, unit scale and zero translation, so x_d is easy to compute by hand."""
    zeros = np.zeros((21, 3), dtype=np.float32)
    return KpInfo(0.0, 0.0, 0.0, EYE3, np.zeros(3, np.float32), zeros if exp is None else exp, 1.0,
                  zeros if kp is None else kp)


def never(_: np.ndarray) -> np.ndarray:
    raise AssertionError("this MLP must not be called in this branch")


# --- section 4: head pose ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("bins", "deg"), [((0,), -97.5), ((32,), -1.5), ((65,), 97.5), ((40,), 22.5),
                                           ((62, 63), 90.0), ((10, 20), -52.5)])
def test_headpose_of_peaked_logits(bins: tuple[int, ...], deg: float) -> None:
    assert headpose_deg(peaked(*bins)) == pytest.approx(deg, abs=1e-9)


def test_headpose_of_uniform_logits_is_zero() -> None:
    # mean bin index of a uniform softmax over 0..65 is 32.5 -> 3 * 32.5 - 97.5 = 0
    assert headpose_deg(np.full((1, 66), 3.7, dtype=np.float32)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("angles", "expected"), [((0, 90, 0), R_YAW_90), ((90, 0, 0), R_PITCH_90),
                                                  ((0, 0, 90), R_ROLL_90), ((0, 0, 0), EYE3)])
def test_rotation_of_quarter_turns(angles: tuple[float, float, float], expected: np.ndarray) -> None:
    R = rotation(*angles)
    assert R.dtype == np.float32 and R.shape == (3, 3)
    np.testing.assert_allclose(R, expected, atol=1e-7)


def test_rotation_composes_z_y_x_then_transposes() -> None:
    # (Rz Ry Rx)^T with pitch = yaw = 90: Ry Rx = [[0,1,0],[0,0,-1],[-1,0,0]], transposed; Rx Ry would differ
    np.testing.assert_allclose(rotation(90, 90, 0), [[0, 0, -1], [1, 0, 0], [0, -1, 0]], atol=1e-7)
    c, s = np.sqrt(3) / 2, 0.5  # yaw 30 degrees
    np.testing.assert_allclose(rotation(0, 30, 0), [[c, 0, -s], [0, 1, 0], [s, 0, c]], atol=1e-7)


# --- section 5: transform ------------------------------------------------------------------------------------------

def test_transform_kp_by_hand() -> None:
    kp = np.zeros((21, 3), dtype=np.float32)
    kp[0], kp[1] = [1, 2, 3], [0, 1, 0]
    exp = np.zeros((21, 3), dtype=np.float32)
    exp[0] = [0.1, 0, 0]
    t = np.array([0.5, -1.0, 100.0], dtype=np.float32)
    x = transform_kp(kp, R_YAW_90, exp, 2.0, t)
    # row 0: [1,2,3] @ R = [3,2,-1]; + exp -> [3.1,2,-1]; * 2 -> [6.2,4,-2]; + (t_x, t_y, 0) -> [6.7,3,-2]
    np.testing.assert_allclose(x[0], [6.7, 3.0, -2.0], atol=1e-6)
    np.testing.assert_allclose(x[1], [0.5, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(x[2:], np.tile([0.5, -1.0, 0.0], (19, 1)), atol=1e-6)
    assert x.dtype == np.float32


def test_kp_info_from_raw_outputs() -> None:
    rng = np.random.default_rng(1)
    outputs = {"pitch": np.zeros((1, 66), np.float32), "yaw": peaked(62, 63), "roll": peaked(40),
               "t": np.array([[0.1, 0.2, 0.3]], np.float32), "exp": rng.normal(size=(1, 63)).astype(np.float32),
               "scale": np.array([[1.7]], np.float32), "kp": rng.normal(size=(1, 63)).astype(np.float32)}
    info = kp_info_from_outputs(outputs)
    assert (info.pitch, info.yaw, info.roll) == pytest.approx((0.0, 90.0, 22.5), abs=1e-9)
    c, s = np.cos(np.radians(22.5)), np.sin(np.radians(22.5))
    Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    np.testing.assert_allclose(info.R, (Rz @ R_YAW_90.T).T, atol=1e-6)
    np.testing.assert_array_equal(info.exp[4], outputs["exp"][0, 12:15])
    np.testing.assert_array_equal(info.kp[20], outputs["kp"][0, 60:63])
    np.testing.assert_array_equal(info.t, outputs["t"][0])
    assert info.scale == pytest.approx(1.7) and isinstance(info.scale, float)


def test_kp_info_rejects_bad_outputs() -> None:
    good = {"pitch": np.zeros((1, 66)), "yaw": np.zeros((1, 66)), "roll": np.zeros((1, 66)), "t": np.zeros((1, 3)),
            "exp": np.zeros((1, 63)), "scale": np.ones((1, 1)), "kp": np.zeros((1, 63))}
    with pytest.raises(MotionError) as err:
        kp_info_from_outputs({k: v for k, v in good.items() if k != "kp"})
    assert str(err.value) == ("motion_extractor outputs lack 'kp' (got ['exp', 'pitch', 'roll', 'scale', 't', 'yaw']); "
                              "re-export the models folder")
    with pytest.raises(MotionError) as err:
        kp_info_from_outputs({**good, "exp": np.zeros((1, 21, 3))})
    assert str(err.value) == ("motion_extractor output 'exp' has shape (1, 21, 3), expected (1, 63); "
                              "re-export the models folder")


# --- section 6: motion transfer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_relative_motion_at_reference_frame_gives_x_s(seed: int) -> None:
    rng = np.random.default_rng(seed)
    src, drv = random_info(rng), random_info(rng)
    ref = Motion.from_kp_info(drv)
    np.testing.assert_allclose(relative_motion(src, ref, ref), src.x, atol=1e-6, rtol=0)


def test_relative_motion_by_hand() -> None:
    kp = np.zeros((21, 3), dtype=np.float32)
    kp[0] = [1, 2, 3]
    src = plain_info(kp)
    zeros = np.zeros((21, 3), dtype=np.float32)
    ref = Motion(R=R_ROLL_90, exp=zeros + 0.25, scale=2.0, t=np.array([1.0, 1.0, 1.0], np.float32))
    exp_d = zeros + 0.25
    exp_d[0, 0] += 0.5
    # R_d @ R_ref^T = yaw90 when R_d = yaw90 @ roll90; t_d - t_ref = (0.1, 0.2, 5) with z dropped; scale ratio 2
    drv = Motion(R=R_YAW_90 @ R_ROLL_90, exp=exp_d, scale=4.0, t=np.array([1.1, 1.2, 6.0], np.float32))
    x = relative_motion(src, drv, ref)
    # row 0: 2 * ([3,2,-1] + [0.5,0,0]) + [0.1,0.2,0] = [7.1, 4.2, -2]; other rows: 0 + t
    np.testing.assert_allclose(x[0], [7.1, 4.2, -2.0], atol=1e-6)
    np.testing.assert_allclose(x[1:], np.tile([0.1, 0.2, 0.0], (20, 1)), atol=1e-6)


def test_absolute_motion_copies_only_the_listed_exp_entries() -> None:
    src = plain_info()  # kp = 0, exp_s = 0, scale 1, t 0: x_d == scale_s * exp_new + t_d
    drv = Motion(R=R_YAW_90, exp=np.ones((21, 3), np.float32), scale=3.0, t=np.array([0.5, 0.25, 9.0], np.float32))
    expected = np.zeros((21, 3), dtype=np.float32)
    for k in (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20):
        expected[k] = 1
    expected[3, 1] = expected[4, 1] = expected[5, 2] = expected[8, 2] = expected[9, 1] = expected[9, 2] = 1
    # kp 0, 7 and 10 keep the source; the driving scale (3) is never used; t_z dropped
    np.testing.assert_array_equal(absolute_motion(src, drv), expected + [0.5, 0.25, 0.0])


def test_absolute_motion_uses_driving_rotation_and_source_scale() -> None:
    kp = np.zeros((21, 3), dtype=np.float32)
    kp[0] = [1, 2, 3]
    src = KpInfo(0, 0, 0, EYE3, np.zeros(3, np.float32), np.zeros((21, 3), np.float32), 2.0, kp)
    drv = Motion(R=R_YAW_90, exp=np.zeros((21, 3), np.float32), scale=5.0, t=np.zeros(3, np.float32))
    np.testing.assert_allclose(absolute_motion(src, drv)[0], [6.0, 4.0, -2.0], atol=1e-6)


LIP_KP, EYE_KP = [6, 12, 14, 17, 19, 20], [11, 13, 15, 16, 18]


@pytest.mark.parametrize("region", ["all", "exp", "pose", "lip", "eyes"])
@pytest.mark.parametrize("seed", range(3))
def test_every_region_gives_x_s_at_the_reference_frame(region: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    src, ref = random_info(rng), Motion.from_kp_info(random_info(rng))
    np.testing.assert_allclose(relative_motion(src, ref, ref, region), src.x, atol=1e-6, rtol=0)


def test_relative_regions_move_only_their_part() -> None:
    rng = np.random.default_rng(7)
    src, ref, drv = random_info(rng), Motion.from_kp_info(random_info(rng)), Motion.from_kp_info(random_info(rng))
    moved_exp = src.exp + (drv.exp - ref.exp)
    R_all, t_all = (drv.R @ ref.R.T) @ src.R, src.t + (drv.t - ref.t)

    def x(R: np.ndarray, exp: np.ndarray, scale: float, t: np.ndarray) -> np.ndarray:
        return transform_kp(src.kp, R, exp, scale, t)

    only = lambda rows: np.where(np.isin(np.arange(21), rows)[:, None], moved_exp, src.exp)  # noqa: E731
    expected = {
        "all": x(R_all, moved_exp, src.scale * drv.scale / ref.scale, t_all),
        "exp": x(src.R, moved_exp, src.scale, src.t),  # the head stays where the portrait has it
        "pose": x(R_all, src.exp, src.scale, t_all),  # the portrait keeps its expression
        "lip": x(src.R, only(LIP_KP), src.scale, src.t),
        "eyes": x(src.R, only(EYE_KP), src.scale, src.t),
    }
    for region, want in expected.items():
        np.testing.assert_allclose(relative_motion(src, drv, ref, region), want, atol=1e-6, err_msg=region)
    # the lip region changes exactly the lip keypoints' rows (pose, scale and t stay the source's)
    changed = np.flatnonzero(np.abs(relative_motion(src, drv, ref, "lip") - src.x).max(axis=1) > 1e-6)
    assert changed.tolist() == LIP_KP
    assert region_exp_mask("pose").sum() == 0 and region_exp_mask("exp").all()


def test_absolute_regions_keep_the_source_pose_outside_all_and_pose() -> None:
    src = plain_info()
    drv = Motion(R=R_YAW_90, exp=np.ones((21, 3), np.float32), scale=3.0, t=np.array([0.5, 0.25, 9.0], np.float32))
    eyes = absolute_motion(src, drv, "eyes")  # identity pose, zero t: x is the copied expression
    np.testing.assert_array_equal(np.flatnonzero(eyes.any(axis=1)), EYE_KP)
    np.testing.assert_array_equal(eyes[EYE_KP], 1.0)
    np.testing.assert_array_equal(absolute_motion(src, drv, "pose"), np.tile([0.5, 0.25, 0.0], (21, 1)))
    np.testing.assert_array_equal(absolute_motion(src, drv, "exp"), absolute_motion(src, drv) - [0.5, 0.25, 0.0])


# --- section 7.1: stitching ------------------------------------------------------------------------------------------

def test_stitching_input_layout() -> None:
    rng = np.random.default_rng(2)
    x_s, x_d = rng.normal(size=(21, 3)).astype(np.float32), rng.normal(size=(21, 3)).astype(np.float32)
    feat = stitching_input(x_s, x_d)
    assert feat.shape == (1, 126) and feat.dtype == np.float32
    assert (feat[0, 0], feat[0, 5], feat[0, 62]) == (x_s[0, 0], x_s[1, 2], x_s[20, 2])
    assert (feat[0, 63], feat[0, 125]) == (x_d[0, 0], x_d[20, 2])


def test_apply_stitching_adds_delta_and_shared_xy_shift() -> None:
    rng = np.random.default_rng(3)
    x_d = rng.normal(size=(21, 3)).astype(np.float32)
    delta = (np.arange(65, dtype=np.float32) / 100)[None]
    x = apply_stitching(x_d, delta)
    for k in range(21):
        for c in range(3):
            shift = delta[0, 63 + c] if c < 2 else np.float32(0)
            assert x[k, c] == (x_d[k, c] + delta[0, 3 * k + c]) + shift
    assert not np.shares_memory(x, x_d)


def test_mlp_output_shape_is_checked() -> None:
    with pytest.raises(MotionError) as err:
        apply_stitching(np.zeros((21, 3), np.float32), np.zeros((1, 63)))
    assert str(err.value) == "the stitching MLP returned shape (1, 63), expected (1, 65); re-export the models folder"
    with pytest.raises(MotionError) as err:
        kp_delta(np.zeros((63,)), "eye")
    assert str(err.value) == "the eye MLP returned shape (63,), expected (1, 63); re-export the models folder"


# --- section 7.2/7.3: retargeting inputs, multipliers, lip_zero -----------------------------------------------------

def test_eye_and_lip_inputs_with_multipliers() -> None:
    x_s = np.arange(63, dtype=np.float32).reshape(21, 3)
    eye = eye_input(x_s, np.array([0.3, 0.4]), 0.2, multiplier=2.0)
    assert eye.shape == (1, 66) and eye.dtype == np.float32
    np.testing.assert_array_equal(eye[0, :63], np.arange(63))  # x_s is never scaled
    np.testing.assert_allclose(eye[0, 63:], [0.6, 0.8, 0.4], rtol=1e-6)
    lip = lip_input(x_s, 0.05, 0.2, multiplier=0.5)
    assert lip.shape == (1, 65)
    np.testing.assert_array_equal(lip[0, :63], np.arange(63))
    np.testing.assert_allclose(lip[0, 63:], [0.025, 0.1], rtol=1e-6)
    np.testing.assert_allclose(lip_zero_input(x_s, 0.05)[0, 63:], [0.05, 0.0], rtol=1e-6)


@pytest.mark.parametrize(("c_s_lip", "needed"), [(0.03, True), (0.0299, False), (0.2, True), (0.0, False)])
def test_lip_zero_threshold(c_s_lip: float, needed: bool) -> None:
    assert lip_zero_needed(c_s_lip) is needed


def test_lip_zero_delta_only_when_it_applies() -> None:
    x_s = np.full((21, 3), 0.5, dtype=np.float32)
    seen: list[np.ndarray] = []

    def lip_mlp(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        return np.tile(np.array([[x[0, 63], x[0, 64], -1.0]], np.float32), (1, 21))

    on = ProcessOptions(lip_zero=True, relative=True, lip_retargeting_multiplier=3.0)
    delta = lip_zero_delta(x_s, 0.03, lip_mlp, on)
    np.testing.assert_allclose(delta, np.tile([0.03, 0.0, -1.0], (21, 1)), rtol=1e-6)  # multiplier not applied
    assert len(seen) == 1
    assert lip_zero_delta(x_s, 0.0299, never, on) is None
    assert lip_zero_delta(x_s, None, never, on) is None
    assert lip_zero_delta(x_s, 0.5, never, ProcessOptions(lip_zero=False)) is None
    assert lip_zero_delta(x_s, 0.5, never, ProcessOptions(relative=False)) is None


# --- section 7.3: Algorithm 1 -----------------------------------------------------------------------------------------

RNG = np.random.default_rng(4)
X_S = RNG.normal(0, 0.3, (21, 3)).astype(np.float32)
X_D = RNG.normal(0, 0.3, (21, 3)).astype(np.float32)
STITCH_DELTA = RNG.normal(0, 0.01, (1, 65)).astype(np.float32)
LIP0 = RNG.normal(0, 0.01, (21, 3)).astype(np.float32)
C_S_EYES, C_D_EYES = np.array([0.30, 0.32], np.float32), np.array([0.10, 0.90], np.float32)


def stitched(x: np.ndarray) -> np.ndarray:
    """Hand formula of stitching with the constant STITCH_DELTA."""
    out = x + STITCH_DELTA[0, :63].reshape(21, 3)
    out[:, 0] += STITCH_DELTA[0, 63]
    out[:, 1] += STITCH_DELTA[0, 64]
    return out


class Recorder:
    """Stand-in MLP: records its inputs and returns `fn(input)`."""

    def __init__(self, fn: Mlp) -> None:
        self.fn, self.inputs = fn, []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.inputs.append(x.copy())
        return self.fn(x)


def eye_rows(x: np.ndarray) -> np.ndarray:
    """Eye stand-in: every keypoint moves by (c_s_left, c_s_right, c_d_left) as fed to the MLP."""
    return np.tile(x[:, 63:66], (1, 21))


def lip_rows(x: np.ndarray) -> np.ndarray:
    """Lip stand-in: every keypoint moves by (c_s_lip, c_d_lip, 0) as fed to the MLP."""
    return np.tile(np.concatenate([x[:, 63:65], np.zeros((1, 1), np.float32)], axis=1), (1, 21))


def compose(options: ProcessOptions, stitch_mlp: Mlp = never, eye_mlp: Mlp = never, lip_mlp: Mlp = never,
            **kw: object) -> np.ndarray:
    ratios = dict(c_s_eyes=C_S_EYES, c_s_lip=0.05, c_d_eyes=C_D_EYES, c_d_lip=0.4)
    return compose_driving_kp(X_S, X_D, options, stitching_mlp=stitch_mlp, eye_mlp=eye_mlp, lip_mlp=lip_mlp,
                              **{**ratios, **kw})


def test_branch_a_no_stitching_no_retargeting() -> None:
    plain = ProcessOptions(stitching=False)
    np.testing.assert_array_equal(compose(plain), X_D)
    np.testing.assert_array_equal(compose(plain, lip_delta0=LIP0), X_D + LIP0)


def test_branch_b_stitching_then_unstitched_lip_delta() -> None:
    mlp = Recorder(lambda x: STITCH_DELTA)
    np.testing.assert_allclose(compose(ProcessOptions(), mlp), stitched(X_D), atol=1e-7)
    x = compose(ProcessOptions(), mlp, lip_delta0=LIP0)
    np.testing.assert_allclose(x, stitched(X_D) + LIP0, atol=1e-7)
    # the stitching MLP saw [x_s, x_d] without the lip delta: it is added after stitching
    np.testing.assert_array_equal(mlp.inputs[-1], np.concatenate([X_S.ravel(), X_D.ravel()])[None])


def test_branch_c_relative_discards_driving_motion() -> None:
    options = ProcessOptions(stitching=False, eye_retargeting=True, eyes_retargeting_multiplier=2.0)
    x = compose(options, eye_mlp=eye_rows, lip_delta0=LIP0)  # lip_delta0 is ignored in branch c
    np.testing.assert_allclose(x, X_S + np.array([0.60, 0.64, 0.20], np.float32), atol=1e-7)
    options = ProcessOptions(stitching=False, lip_retargeting=True, lip_retargeting_multiplier=0.5)
    np.testing.assert_allclose(compose(options, lip_mlp=lip_rows), X_S + [0.025, 0.2, 0.0], atol=1e-7)


def test_branch_c_absolute_both_deltas_then_stitching() -> None:
    mlp = Recorder(lambda x: STITCH_DELTA)
    options = ProcessOptions(relative=False, eye_retargeting=True, lip_retargeting=True)
    x = compose(options, mlp, eye_rows, lip_rows)
    moved = X_D + np.array([0.30, 0.32, 0.10], np.float32) + np.array([0.05, 0.4, 0.0], np.float32)
    np.testing.assert_allclose(x, stitched(moved), atol=1e-6)
    np.testing.assert_allclose(mlp.inputs[-1][0, 63:], moved.ravel(), atol=1e-6)


def test_branch_c_skips_a_delta_without_ratios() -> None:
    options = ProcessOptions(stitching=False, eye_retargeting=True, lip_retargeting=True)
    np.testing.assert_array_equal(compose(options, c_d_eyes=None, c_s_lip=None), X_S)
    np.testing.assert_allclose(compose(options, eye_mlp=eye_rows, c_d_lip=None), X_S + [0.30, 0.32, 0.10],
                               atol=1e-7)


def test_driving_multiplier_scales_the_final_motion_of_every_branch() -> None:
    mlp = Recorder(lambda x: STITCH_DELTA)
    for multiplier in (0.0, 0.5, 2.0):
        x = compose(ProcessOptions(driving_multiplier=multiplier), mlp, lip_delta0=LIP0)
        np.testing.assert_allclose(x, X_S + (stitched(X_D) + LIP0 - X_S) * multiplier, atol=1e-6)
    options = ProcessOptions(stitching=False, eye_retargeting=True, driving_multiplier=0.5)
    np.testing.assert_allclose(compose(options, eye_mlp=eye_rows), X_S + [0.15, 0.16, 0.05], atol=1e-7)
    np.testing.assert_array_equal(compose(ProcessOptions(stitching=False, driving_multiplier=1.0)), X_D)


def test_lip_zero_boundary_changes_only_the_lip_delta() -> None:
    options = ProcessOptions(stitching=False, lip_zero=True)
    below = lip_zero_delta(X_S, 0.0299, never, options)
    at = lip_zero_delta(X_S, 0.03, lip_rows, options)
    np.testing.assert_array_equal(compose(options, lip_delta0=below), X_D)
    np.testing.assert_allclose(compose(options, lip_delta0=at) - X_D, np.tile([0.03, 0.0, 0.0], (21, 1)), atol=1e-7)
