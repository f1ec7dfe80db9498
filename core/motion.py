"""Per-frame motion math of LivePortrait (spec sections 4-7) as small numpy functions named like the paper.

Keypoints are row vectors (21 x 3) multiplied on the right by R, exactly as the official code does, so that
x_s, x_d and every delta here can be fed to the exported networks without any transposition. The three small
MLPs (stitching, eye, lip) are passed in as callables, so this module never touches a runner and tests can use
exact stand-ins.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from core.edit import NO_EDIT, Edit, edit_exp
from core.options import ProcessOptions

K = 21
#: c_s_lip at or above this means the source mouth is open, and lip_zero closes it (official 0.03)
LIP_ZERO_THRESHOLD = 0.03
#: source video: the first frame's mean eye-open ratio below this counts as closed eyes, and source-video eye
#: retargeting then holds the eyes at SOURCE_EYE_OPEN instead (official 0.18 and 0.39)
SOURCE_EYE_THRESHOLD, SOURCE_EYE_OPEN = 0.18, 0.39
#: the official smoother of a source video's composed motion: a Kalman smoother with observation variance 3e-7
#: (the official `driving_smooth_observation_variance`; larger is smoother) and process variance 1e-5
SMOOTH_OBSERVATION_VARIANCE, SMOOTH_PROCESS_VARIANCE = 3e-7, 1e-5

#: the official `lip_array` (core/resources/lip_array.npy, all 63 float32 entries; MIT, KwaiVGI): the neutral
#: expression that a single driving IMAGE is measured against
LIP_ARRAY = np.load(Path(__file__).resolve().parent / "resources" / "lip_array.npy", allow_pickle=False).reshape(K, 3)
LIP_ARRAY.setflags(write=False)

#: an MLP as a callable: its one input array (1, n) -> its raw output array (1, m)
Mlp = Callable[[np.ndarray], np.ndarray]

#: raw motion_extractor outputs and their contract shapes (batch 1)
MOTION_OUTPUTS = {"pitch": 66, "yaw": 66, "roll": 66, "t": 3, "exp": 63, "scale": 1, "kp": 63}


class MotionError(ValueError):
    """A network output does not have the contract shape; the message names it and the fix."""


def _abs_exp_mask() -> np.ndarray:
    """Which exp entries absolute motion takes from the driving frame (spec 6; kp 0, 7, 10 keep the source)."""
    mask = np.zeros((K, 3), dtype=bool)
    mask[[1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]] = True
    mask[[3, 4], 1] = True  # y only
    mask[[5, 8], 2] = True  # z only
    mask[9, 1:] = True  # y and z
    return mask


#: (21, 3) bool: exp entries copied from the driving frame by absolute motion, region "all"
ABSOLUTE_EXP_MASK = _abs_exp_mask()

#: the keypoints whose expression the "lip" and "eyes" animation regions move (spec 6)
REGION_KEYPOINTS = {"lip": (6, 12, 14, 17, 19, 20), "eyes": (11, 13, 15, 16, 18)}


def region_exp_mask(region: str) -> np.ndarray:
    """(21, 1) bool: the keypoints whose expression follows the driver in `region` (none for "pose")."""
    mask = np.zeros((K, 1), dtype=bool)
    if region in ("all", "exp"):
        mask[:] = True
    elif region in REGION_KEYPOINTS:
        mask[list(REGION_KEYPOINTS[region])] = True
    return mask


def moves_pose(region: str) -> bool:
    """Whether the driver's head rotation and translation reach the portrait in `region`."""
    return region in ("all", "pose")


def headpose_deg(logits: np.ndarray) -> float:
    """Degrees from a 66-bin head: the softmax expectation of the bin index, 3 degrees a bin, centred on 97.5."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    p = np.exp(z - z.max())
    p /= p.sum()
    return float(3.0 * np.dot(p, np.arange(z.size)) - 97.5)


def rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R = (Rz Ry Rx)^T from degrees; transposed because keypoints are row vectors (x @ R)."""
    p, y, r = np.radians([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return (rz @ ry @ rx).T.astype(np.float32)


def transform_kp(kp: np.ndarray, R: np.ndarray, exp: np.ndarray, scale: float, t: np.ndarray) -> np.ndarray:
    """Paper Eqn. 2: x = scale * (kp @ R + exp) + (t_x, t_y, 0); t_z is never used."""
    x = np.float32(scale) * (kp @ R + exp)
    x[:, :2] += t[:2]
    return x.astype(np.float32)


@dataclass
class KpInfo:
    """One image's motion_extractor result, post-processed (spec 5); kp is the canonical x_c."""

    pitch: float
    yaw: float
    roll: float
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)
    exp: np.ndarray  # (21, 3)
    scale: float
    kp: np.ndarray  # (21, 3)

    @property
    def x(self) -> np.ndarray:
        """This image's own transformed keypoints (x_s for the source)."""
        return transform_kp(self.kp, self.R, self.exp, self.scale, self.t)


def kp_info_from_outputs(outputs: Mapping[str, np.ndarray]) -> KpInfo:
    """Post-process the raw motion_extractor outputs (bin logits, flat kp/exp) into a KpInfo."""
    for name, size in MOTION_OUTPUTS.items():
        if name not in outputs:
            raise MotionError(
                f"motion_extractor outputs lack {name!r} (got {sorted(outputs)}); re-export the models folder"
            )
        shape = np.shape(outputs[name])
        if shape != (1, size):
            raise MotionError(
                f"motion_extractor output {name!r} has shape {shape}, expected (1, {size}); "
                "re-export the models folder"
            )
    pitch, yaw, roll = (headpose_deg(outputs[name]) for name in ("pitch", "yaw", "roll"))
    return KpInfo(
        pitch=pitch,
        yaw=yaw,
        roll=roll,
        R=rotation(pitch, yaw, roll),
        t=np.asarray(outputs["t"], dtype=np.float32).reshape(3),
        exp=np.asarray(outputs["exp"], dtype=np.float32).reshape(K, 3),
        scale=float(np.asarray(outputs["scale"]).reshape(())),
        kp=np.asarray(outputs["kp"], dtype=np.float32).reshape(K, 3),
    )


@dataclass
class Motion:
    """What one driving frame contributes: pose, expression, scale, translation and, where known, the driving
    eye-open ratios (left, right) and lip-open ratio that retargeting needs. Live frames and template frames
    both become a Motion, so the rest of the pipeline does not care where motion came from."""

    R: np.ndarray  # (3, 3)
    exp: np.ndarray  # (21, 3)
    scale: float
    t: np.ndarray  # (3,)
    eye_ratio: np.ndarray | None = None  # (2,)
    lip_ratio: np.ndarray | None = None  # (1,)

    @classmethod
    def from_kp_info(
        cls, info: KpInfo, eye_ratio: np.ndarray | None = None, lip_ratio: np.ndarray | None = None
    ) -> Motion:
        """A live driving frame's motion, with its 203-point ratios when landmarks were found."""
        return cls(R=info.R, exp=info.exp, scale=info.scale, t=info.t, eye_ratio=eye_ratio, lip_ratio=lip_ratio)


def image_reference(drv: Motion) -> Motion:
    """The reference for relative motion when the driver is ONE image (nothing to compare it with): the image's own
    pose, scale and translation (so the source keeps its pose) and the neutral LIP_ARRAY expression, so that
    exp_new = exp_s + (exp_d - lip_array), as the official pipeline does for a driving image."""
    return replace(drv, exp=LIP_ARRAY.copy())


#: the composed motion before the keypoint transform: (R, exp, scale, t)
Composed = tuple[np.ndarray, np.ndarray, float, np.ndarray]


def relative_parts(src: KpInfo, drv: Motion, ref: Motion, region: str = "all") -> Composed:
    """(R, exp, scale, t) of relative motion: the driving frame's change since the reference frame, applied to the
    source, for the parts of the face that `region` animates (the rest keep the source's)."""
    pose = moves_pose(region)
    R_new = (drv.R @ ref.R.T) @ src.R if pose else src.R
    exp_new = np.where(region_exp_mask(region), src.exp + (drv.exp - ref.exp), src.exp)
    scale_new = src.scale * (drv.scale / ref.scale) if region == "all" else src.scale
    t_new = src.t + (drv.t - ref.t) if pose else src.t
    return R_new, exp_new, scale_new, t_new


def absolute_parts(src: KpInfo, drv: Motion, region: str = "all") -> Composed:
    """(R, exp, scale, t) without a reference: driving pose and translation (where `region` moves the pose),
    source scale, and the driving expression where both ABSOLUTE_EXP_MASK and the region take it."""
    pose = moves_pose(region)
    exp_new = np.where(ABSOLUTE_EXP_MASK & region_exp_mask(region), drv.exp, src.exp)
    return drv.R if pose else src.R, exp_new, src.scale, drv.t if pose else src.t


def apply_edit(src: KpInfo, composed: Composed, edit: Edit) -> Composed:
    """The editing controls on top of composed motion: the head offset rotation (R_edit = R(source angles +
    offsets) @ R_s^T, as the official demo builds it) applied on top of R, the sheet's additions to exp, and
    move_z on the scale. An all-default Edit returns `composed` untouched (bit-identical output)."""
    if edit.is_noop:
        return composed
    R, exp, scale, t = composed
    if edit.turns_head:
        R_d = rotation(src.pitch + edit.head_pitch, src.yaw + edit.head_yaw, src.roll + edit.head_roll)
        R = (R_d @ src.R.T) @ R
    return R, edit_exp(exp, edit), scale * edit.move_z, t


def relative_motion(src: KpInfo, drv: Motion, ref: Motion, region: str = "all", edit: Edit = NO_EDIT) -> np.ndarray:
    """x_d of relative motion (relative_parts), edited. With drv == ref and no edit this gives x_s back in every
    region (up to rounding of R_ref @ R_ref^T)."""
    return transform_kp(src.kp, *apply_edit(src, relative_parts(src, drv, ref, region), edit))


def absolute_motion(src: KpInfo, drv: Motion, region: str = "all", edit: Edit = NO_EDIT) -> np.ndarray:
    """x_d of absolute motion (absolute_parts), edited."""
    return transform_kp(src.kp, *apply_edit(src, absolute_parts(src, drv, region), edit))


def edited_kp(src: KpInfo, edit: Edit) -> np.ndarray:
    """A still portrait's edited keypoints, as the official demo makes them (the sheet's steps 1-3): R_new =
    (R_d @ R_s^T) @ R_s, exp with the additions, x_d = move_z * scale * (kp @ R_new + exp) + t with t_z KEPT
    (unlike the driving path's transform)."""
    R_d = rotation(src.pitch + edit.head_pitch, src.yaw + edit.head_yaw, src.roll + edit.head_roll)
    R_new = (R_d @ src.R.T) @ src.R
    x = np.float32(edit.move_z) * np.float32(src.scale) * (src.kp @ R_new + edit_exp(src.exp, edit)) + src.t
    return x.astype(np.float32)


def ratio_deltas(
    x_s: np.ndarray, c_s_eyes: np.ndarray | None, c_s_lip: float | None, edit: Edit, eye_mlp: Mlp, lip_mlp: Mlp
) -> np.ndarray | None:
    """The sheet's step 4: the eye / lip retargeting deltas asking for the edit's target eye- and lip-open ratios
    (input [source ratio(s), target]); None when no target is set or the portrait has no landmarks."""
    delta = None
    if edit.target_eye_ratio is not None and c_s_eyes is not None:
        delta = kp_delta(eye_mlp(eye_input(x_s, c_s_eyes, edit.target_eye_ratio)), "eye")
    if edit.target_lip_ratio is not None and c_s_lip is not None:
        lip = kp_delta(lip_mlp(lip_input(x_s, c_s_lip, edit.target_lip_ratio)), "lip")
        delta = lip if delta is None else delta + lip
    return delta


def kp_delta(delta: np.ndarray, name: str = "retargeting") -> np.ndarray:
    """An eye/lip MLP output (1, 63) as a keypoint delta (21, 3)."""
    return _checked(delta, 3 * K, name).reshape(K, 3)


def _checked(out: np.ndarray, size: int, name: str) -> np.ndarray:
    """An MLP output as float32 after checking its contract shape (1, size)."""
    out = np.asarray(out, dtype=np.float32)
    if out.shape != (1, size):
        raise MotionError(
            f"the {name} MLP returned shape {out.shape}, expected (1, {size}); re-export the models folder"
        )
    return out


def stitching_input(x_s: np.ndarray, x_d: np.ndarray) -> np.ndarray:
    """The stitching MLP's input (1, 126): [x_s, x_d] flattened."""
    return np.concatenate([x_s.reshape(-1), x_d.reshape(-1)])[None].astype(np.float32)


def apply_stitching(x_d: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """x_d + delta[:63] per keypoint, then the same (dx, dy) = delta[63:65] on every keypoint's x and y."""
    delta = _checked(delta, 3 * K + 2, "stitching")[0]
    x = x_d + delta[: 3 * K].reshape(K, 3)
    x[:, :2] += delta[3 * K :]
    return x


def stitch(x_s: np.ndarray, x_d: np.ndarray, stitching_mlp: Mlp) -> np.ndarray:
    """Stitching (spec 7.1): keeps the shoulders and crop border of the source still under driving motion."""
    return apply_stitching(x_d, stitching_mlp(stitching_input(x_s, x_d)))


def eye_input(x_s: np.ndarray, c_s_eyes: np.ndarray, c_d_eye_left: float, multiplier: float = 1.0) -> np.ndarray:
    """The eye MLP's input (1, 66): [x_s, c_s_left, c_s_right, c_d_left]; only the driving LEFT eye is used.

    multiplier (ComfyUI-LivePortraitKJ's eyes_retargeting_multiplier) scales all three ratios, source and
    driving alike, exactly as that node multiplies its combined eye-ratio tensor before the MLP; x_s is
    never scaled.
    """
    ratios = np.array([c_s_eyes[0], c_s_eyes[1], c_d_eye_left], dtype=np.float32) * np.float32(multiplier)
    return np.concatenate([x_s.reshape(-1).astype(np.float32), ratios])[None]


def lip_input(x_s: np.ndarray, c_s_lip: float, c_d_lip: float, multiplier: float = 1.0) -> np.ndarray:
    """The lip MLP's input (1, 65): [x_s, c_s_lip, c_d_lip].

    multiplier (ComfyUI-LivePortraitKJ's lip_retargeting_multiplier) scales both ratios, as that node
    multiplies its combined lip-ratio tensor before the MLP; x_s is never scaled.
    """
    ratios = np.array([c_s_lip, c_d_lip], dtype=np.float32) * np.float32(multiplier)
    return np.concatenate([x_s.reshape(-1).astype(np.float32), ratios])[None]


def lip_zero_needed(c_s_lip: float, threshold: float = LIP_ZERO_THRESHOLD) -> bool:
    """Only an open source mouth (c_s_lip >= threshold) is closed; a closed one is left alone."""
    return c_s_lip >= threshold


def lip_zero_input(x_s: np.ndarray, c_s_lip: float) -> np.ndarray:
    """The lip MLP's input asking for a closed mouth (c_d_lip = 0); never scaled by the lip multiplier."""
    return lip_input(x_s, c_s_lip, 0.0)


def lip_zero_delta(
    x_s: np.ndarray, c_s_lip: float | None, lip_mlp: Mlp, options: ProcessOptions
) -> np.ndarray | None:
    """lip_delta0, computed once per source: the (21, 3) delta that closes an open source mouth, or None where
    lip_zero does not apply (option off, absolute motion, no source landmarks, or mouth already closed)."""
    if not (options.lip_zero and options.relative) or c_s_lip is None or not lip_zero_needed(c_s_lip):
        return None
    return kp_delta(lip_mlp(lip_zero_input(x_s, c_s_lip)), "lip")


def compose_driving_kp(
    x_s: np.ndarray,
    x_d: np.ndarray,
    options: ProcessOptions,
    *,
    stitching_mlp: Mlp,
    eye_mlp: Mlp,
    lip_mlp: Mlp,
    c_s_eyes: np.ndarray | None = None,
    c_s_lip: float | None = None,
    c_d_eyes: np.ndarray | None = None,
    c_d_lip: float | None = None,
    lip_delta0: np.ndarray | None = None,
    edit_offset: np.ndarray | None = None,
) -> np.ndarray:
    """Algorithm 1 (spec 7.3): the final driving keypoints x_d' fed to the warping module.

    (a) no stitching, no retargeting: x_d (+ lip_delta0);
    (b) stitching only: stitch(x_s, x_d) (+ lip_delta0, added after stitching, itself un-stitched);
    (c) eye and/or lip retargeting: x_s (relative motion) or x_d (absolute) plus the eye and lip deltas, then
        stitched if stitching is on. With relative motion this is the official behaviour kept exactly: ALL
        driving pose and expression is discarded and only the retargeted eyes/lips move.
    A retargeting delta needs both its source ratio (c_s_*, None without source landmarks) and its driving
    ratio (c_d_*, None without driving landmarks or when a template lacks ratios); it is skipped otherwise.
    c_d_eyes is (left, right) but only the left ratio is used, as in the official code. Last, as officially,
    x_s + (x_d' - x_s) * driving_multiplier scales the whole motion (1.0: unchanged). `edit_offset` (the editing
    controls' share of x_d) is added to x_s in case (c) with relative motion, which would otherwise drop the edit.
    """
    if not (options.eye_retargeting or options.lip_retargeting):
        x = stitch(x_s, x_d, stitching_mlp) if options.stitching else x_d
        if lip_delta0 is not None:
            x = x + lip_delta0
    else:
        x = (x_s if edit_offset is None else x_s + edit_offset) if options.relative else x_d
        if options.eye_retargeting and c_s_eyes is not None and c_d_eyes is not None:
            eye = eye_input(x_s, c_s_eyes, float(c_d_eyes[0]), options.eyes_retargeting_multiplier)
            x = x + kp_delta(eye_mlp(eye), "eye")
        if options.lip_retargeting and c_s_lip is not None and c_d_lip is not None:
            lip = lip_input(x_s, c_s_lip, c_d_lip, options.lip_retargeting_multiplier)
            x = x + kp_delta(lip_mlp(lip), "lip")
        if options.stitching:
            x = stitch(x_s, x, stitching_mlp)
    return with_multiplier(x_s, x, options.driving_multiplier)


def with_multiplier(x_s: np.ndarray, x_d: np.ndarray, multiplier: float) -> np.ndarray:
    """x_s + (x_d - x_s) * multiplier: the official driving_multiplier, a strength for all the motion."""
    return x_d if multiplier == 1.0 else x_s + (x_d - x_s) * np.float32(multiplier)


def motion_multiplier(x_s: np.ndarray, x_d0: np.ndarray) -> float:
    """The official expression-friendly scale: sqrt(volume of the source keypoints' convex hull) / sqrt(that of
    the first driving frame's composed keypoints), so a driver with a bigger face moves a smaller one less.
    scipy is imported here, not with the module: only the expression-friendly option needs it."""
    from scipy.spatial import ConvexHull

    return float(np.sqrt(ConvexHull(x_s).volume) / np.sqrt(ConvexHull(x_d0).volume))


@dataclass(frozen=True)
class ExpressionFriendly:
    """The official driving_option "expression-friendly" for a still source and a driving video (relative motion
    only): x_d = x_s + (x_d - x_d0) * multiplier, x_d0 the first frame's composed keypoints. An edit is not part
    of the driving motion: its offset is added after the scaling, so a constant offset survives."""

    x_s: np.ndarray
    x_d0: np.ndarray
    multiplier: float

    @classmethod
    def from_first(cls, x_s: np.ndarray, x_d0: np.ndarray) -> ExpressionFriendly:
        return cls(x_s, x_d0, motion_multiplier(x_s, x_d0))

    def scaled(self, x_plain: np.ndarray, x_edited: np.ndarray) -> np.ndarray:
        """x_plain: the frame's composed keypoints without the edit; x_edited: with it."""
        x = self.x_s + (x_plain - self.x_d0) * np.float32(self.multiplier)
        return x if x_edited is x_plain else x + (x_edited - x_plain)


def kalman_smooth(
    series: np.ndarray,
    observation_variance: float = SMOOTH_OBSERVATION_VARIANCE,
    process_variance: float = SMOOTH_PROCESS_VARIANCE,
) -> np.ndarray:
    """Rauch-Tung-Striebel smoothing of a (N, ...) series as a random walk, every entry independently: the model of
    the official smoother (pykalman's KalmanFilter with identity transition and observation, covariances
    process_variance * I and observation_variance * I, initial state = the first frame, initial covariance I).
    With scalar-times-identity covariances every entry has the same gains, so one scalar recursion serves all.
    The result is float32 like the official's (it casts its smoothed means to float32)."""
    y = np.asarray(series, dtype=np.float64).reshape(len(series), -1)
    n = len(y)
    mean, var = np.empty_like(y), np.empty(n)
    m, p = y[0], 1.0  # the state prior before the first observation: its mean is the first frame, covariance I
    for i in range(n):  # forward filter
        if i:
            p = p + process_variance
        gain = p / (p + observation_variance)
        m = m + gain * (y[i] - m)
        p = (1.0 - gain) * p
        mean[i], var[i] = m, p
    for i in range(n - 2, -1, -1):  # backward smoother
        g = var[i] / (var[i] + process_variance)
        mean[i] = mean[i] + g * (mean[i + 1] - mean[i])
    return mean.reshape(np.shape(series)).astype(np.float32)


def video_parts(
    sources: list[KpInfo],
    motions: list[Motion],
    relative: bool,
    region: str = "all",
    observation_variance: float = SMOOTH_OBSERVATION_VARIANCE,
) -> list[Composed]:
    """(R, exp, scale, t) per frame of a SOURCE VIDEO (official rules): frame i of the source with driving frame i
    (one driving image: that image for every frame). Relative: exp_i = exp_s,i + exp_d,i - exp_d,0 and
    R_i = (R_d,i @ R_d,0^T) @ R_s,i; absolute: the driving exp_i and R_i. Both series are Kalman-smoothed over the
    clip (kalman_smooth; a driving image is not smoothed, and relative to an image its exp is measured against
    LIP_ARRAY). The source keeps its own scale and, in relative motion, its translation; only the exp entries of
    ABSOLUTE_EXP_MASK within `region` follow, and R only in the regions that move the pose."""
    video = len(motions) > 1
    n = min(len(sources), len(motions)) if video else len(sources)
    drv = motions[:n] if video else motions * n
    if relative:
        base = drv[0].exp if video else LIP_ARRAY
        exp = np.stack([s.exp + (d.exp - base) for s, d in zip(sources, drv)])
        R = np.stack([(d.R @ drv[0].R.T) @ s.R for s, d in zip(sources, drv)]) if video else np.stack(
            [s.R for s in sources[:n]])
    else:
        exp, R = np.stack([d.exp for d in drv]), np.stack([d.R for d in drv])
    if video:
        exp = kalman_smooth(exp, observation_variance)
        R = kalman_smooth(R, observation_variance)
    pose, mask = moves_pose(region), ABSOLUTE_EXP_MASK & region_exp_mask(region)
    parts: list[Composed] = []
    for i, (src, d) in enumerate(zip(sources, drv)):
        t = d.t if pose and not relative else src.t
        parts.append((R[i] if pose else src.R, np.where(mask, exp[i], src.exp), src.scale, t))
    return parts


def source_eye_target(c_s_eyes_first: np.ndarray) -> float:
    """Source-video eye retargeting: the eye-open ratio every frame is held at, the first frame's mean (or
    SOURCE_EYE_OPEN when the first frame's eyes are closed)."""
    ratio = float(np.mean(c_s_eyes_first[:2]))
    return SOURCE_EYE_OPEN if ratio < SOURCE_EYE_THRESHOLD else ratio
