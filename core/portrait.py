"""What the Animator keeps of one prepared portrait; its own module so the device renderer can take it without
importing the Animator."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.crop import CropInfo
from core.motion import KpInfo


@dataclass
class SourcePortrait:
    """Everything computed once per portrait: crop, keypoints, features, ratios and the paste-back mask."""

    image: np.ndarray  # the original RGB image, full size: paste-back goes here
    crop: CropInfo  # crop of the size-limited image
    M_c2o: np.ndarray  # crop (dsize) -> original full-size pixels
    dsize: int
    info: KpInfo
    x_s: np.ndarray
    f_s: np.ndarray
    c_s_eyes: np.ndarray
    c_s_lip: float
    lip_close: np.ndarray | None  # delta that closes an open mouth (lip_zero), None if already closed
    mask: np.ndarray
    face_box: np.ndarray
