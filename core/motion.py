"""Per-frame motion math of LivePortrait (spec sections 4-7) as small numpy functions named like the paper.

Keypoints are row vectors (21 x 3) multiplied on the right by R, exactly as the official code does, so that
x_s, x_d and every delta here can be fed to the exported networks without any transposition. The three small
MLPs (stitching, eye, lip) are passed in as callables, so this module never touches a runner and tests can use
exact stand-ins.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping

import numpy as np

from core.options import ProcessOptions

K = 21
#: c_s_lip at or above this means the source mouth is open, and lip_zero closes it (official 0.03)
LIP_ZERO_THRESHOLD = 0.03

#: the official `lip_array` (a 1x21x3 constant): the neutral expression that a single driving IMAGE is measured
#: against. The spec lists its entries with |v| >= 1e-3; the smaller ones are taken as 0.
LIP_ARRAY = np.zeros((K, 3), np.float32)
LIP_ARRAY[7, 1], LIP_ARRAY[14, 1], LIP_ARRAY[17, 1] = 0.0026, -0.0018, -0.0012
LIP_ARRAY[19, 1], LIP_ARRAY[19, 2], LIP_ARRAY[20, 1], LIP_ARRAY[20, 2] = -0.0151, -0.0025, 0.0056, 0.0027

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


def relative_motion(src: KpInfo, drv: Motion, ref: Motion, region: str = "all") -> np.ndarray:
    """x_d: the driving frame's change since the reference frame, applied to the source, for the parts of the
    face that `region` animates (the rest keep the source's). With drv == ref this gives x_s back in every region
    (up to rounding of R_ref @ R_ref^T)."""
    pose = moves_pose(region)
    R_new = (drv.R @ ref.R.T) @ src.R if pose else src.R
    exp_new = np.where(region_exp_mask(region), src.exp + (drv.exp - ref.exp), src.exp)
    scale_new = src.scale * (drv.scale / ref.scale) if region == "all" else src.scale
    t_new = src.t + (drv.t - ref.t) if pose else src.t
    return transform_kp(src.kp, R_new, exp_new, scale_new, t_new)


def absolute_motion(src: KpInfo, drv: Motion, region: str = "all") -> np.ndarray:
    """x_d without a reference: driving pose and translation (where `region` moves the pose), source scale, and
    the driving expression where both ABSOLUTE_EXP_MASK and the region take it (the rest keep the source's)."""
    pose = moves_pose(region)
    exp_new = np.where(ABSOLUTE_EXP_MASK & region_exp_mask(region), drv.exp, src.exp)
    return transform_kp(src.kp, drv.R if pose else src.R, exp_new, src.scale, drv.t if pose else src.t)


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
    x_s + (x_d' - x_s) * driving_multiplier scales the whole motion (1.0: unchanged).
    """
    if not (options.eye_retargeting or options.lip_retargeting):
        x = stitch(x_s, x_d, stitching_mlp) if options.stitching else x_d
        if lip_delta0 is not None:
            x = x + lip_delta0
    else:
        x = x_s if options.relative else x_d
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
