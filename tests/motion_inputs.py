"""Made-up motion: random keypoint info (test_motion, test_edit) and templates in the official pickle layout
(test_templates, test_edit_render)."""
from __future__ import annotations

import pickle

import numpy as np

from core.motion import KpInfo, rotation


def random_info(rng: np.random.Generator) -> KpInfo:
    """Keypoint info of a random head pose, expression, scale and keypoints in the ranges the networks give."""
    pitch, yaw, roll = rng.uniform(-40, 40, 3)
    return KpInfo(
        pitch=pitch, yaw=yaw, roll=roll, R=rotation(pitch, yaw, roll),
        t=rng.uniform(-0.2, 0.2, 3).astype(np.float32),
        exp=rng.normal(0, 0.02, (21, 3)).astype(np.float32),
        scale=float(rng.uniform(1.4, 2.0)),
        kp=rng.uniform(-0.8, 0.8, (21, 3)).astype(np.float32),
    )


def official_pickle(n: int = 3, old_keys: bool = False, protocol: int = pickle.HIGHEST_PROTOCOL) -> tuple[bytes, dict]:
    """A template in the official layout (what its make_motion_template writes): (1, ...) float32 arrays."""
    rng = np.random.default_rng(n)
    r_key, eyes_key, lip_key = ("R_d", "c_d_eyes_lst", "c_d_lip_lst") if old_keys else ("R", "c_eyes_lst", "c_lip_lst")
    motion = [{
        "scale": rng.uniform(1, 2, (1, 1)).astype(np.float32),
        r_key: rng.normal(size=(1, 3, 3)).astype(np.float32),
        "exp": rng.normal(size=(1, 21, 3)).astype(np.float32),
        "t": rng.normal(size=(1, 3)).astype(np.float32),
        "kp": rng.normal(size=(1, 21, 3)).astype(np.float32),
        "x_s": rng.normal(size=(1, 21, 3)).astype(np.float32),
    } for _ in range(n)]
    data = {"n_frames": n, "output_fps": 30, "motion": motion,
            eyes_key: [rng.uniform(0, 0.5, (1, 2)).astype(np.float32) for _ in range(n)],
            lip_key: [rng.uniform(0, 0.5, (1, 1)).astype(np.float32) for _ in range(n)]}
    return pickle.dumps(data, protocol=protocol), data
