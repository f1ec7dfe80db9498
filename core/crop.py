"""The official landmark crop (spec 3.5-3.7): a rotated square around the face, plus the driving box crop.

Matrices follow the official conventions: M_o2c maps original-image pixels to crop pixels, M_c2o is its
inverse; both are 3x3 float32 (the official code builds them in float32, so we do too).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: anchor points (spec 3.5): left-eye indices, right-eye indices and the two lip points, per landmark set
ANCHORS = {
    106: ((33, 35, 40, 39), (87, 89, 94, 93), (52, 61)),
    203: ((0, 6, 12, 18), (24, 30, 36, 42), (48, 66)),
}


class LandmarkError(ValueError):
    """Landmarks of an unsupported shape were given to a crop function."""


@dataclass
class CropInfo:
    """One crop: the cropped image, both matrices, the landmarks in crop pixels, and the 256 network input."""

    img: np.ndarray
    M_o2c: np.ndarray
    M_c2o: np.ndarray
    lmk: np.ndarray
    img_256: np.ndarray


def eye_lip_axis(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p0, p1): the eye centre and the lip centre, which fix the face's roll (spec 3.5 step 1)."""
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in ANCHORS:
        raise LandmarkError(
            f"landmarks have shape {pts.shape}; the crop needs 106 or 203 points as an (N, 2) array"
        )
    left, right, lip = ANCHORS[pts.shape[0]]
    p0 = (pts[list(left)].mean(axis=0) + pts[list(right)].mean(axis=0)) / 2
    p1 = (pts[lip[0]] + pts[lip[1]]) / 2
    return p0, p1


def face_axes(p0: np.ndarray, p1: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(ux, uy, angle): uy points from the eyes to the lips, ux is uy turned by -90 degrees (spec 3.5 step 2)."""
    uy = p1 - p0
    length = float(np.linalg.norm(uy))
    uy = np.array([0.0, 1.0]) if length <= 1e-3 else uy / length
    ux = np.array([uy[1], -uy[0]])
    angle = float(np.arccos(np.clip(ux[0], -1.0, 1.0)))
    return ux, uy, -angle if ux[1] < 0 else angle


def parse_rect_from_landmark(
    pts: np.ndarray, scale: float, vx_ratio: float = 0.0, vy_ratio: float = 0.0
) -> tuple[np.ndarray, float, float]:
    """(centre, size, angle) of the square crop around the landmarks, in the face's rotated frame (spec 3.5)."""
    p0, p1 = eye_lip_axis(pts)
    ux, uy, angle = face_axes(p0, p1)
    pts = np.asarray(pts, dtype=np.float64)
    c0 = pts.mean(axis=0)
    rotated = (pts - c0) @ np.stack([ux, uy]).T
    lo, hi = rotated.min(axis=0), rotated.max(axis=0)
    c1 = (lo + hi) / 2
    size = float((hi - lo).max()) * scale
    centre = c0 + ux * c1[0] + uy * c1[1] + ux * (vx_ratio * size) + uy * (vy_ratio * size)
    return centre, size, angle


def similarity_o2c(centre: np.ndarray, size: float, angle: float, dsize: int) -> np.ndarray:
    """3x3 float32 original->crop matrix: scale dsize/size, rotate by -angle, centre -> (dsize/2, dsize/2)."""
    s = dsize / size
    cos, sin = np.cos(angle), np.sin(angle)
    cx, cy = centre
    half = dsize / 2
    return np.array(
        [
            [s * cos, s * sin, half - s * (cos * cx + sin * cy)],
            [-s * sin, s * cos, half - s * (-sin * cx + cos * cy)],
            [0.0, 0.0, 1.0],
        ],
        dtype=np.float32,
    )


def crop_transform(
    pts: np.ndarray, dsize: int, scale: float, vx_ratio: float = 0.0, vy_ratio: float = 0.0, rotate: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(M_o2c 2x3, M_c2o 3x3) of the generic landmark crop; with rotate off the crop stays axis-aligned."""
    centre, size, angle = parse_rect_from_landmark(pts, scale, vx_ratio, vy_ratio)
    M_o2c = similarity_o2c(centre, size, angle if rotate else 0.0, dsize)
    return M_o2c[:2], np.linalg.inv(M_o2c)


def transform_pts(pts: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 2x3 or 3x3 affine matrix to (N, 2) points."""
    return np.asarray(pts) @ M[:2, :2].T + M[:2, 2]


def crop_image(img: np.ndarray, M_o2c: np.ndarray, dsize: int) -> np.ndarray:
    """Warp the original image into the dsize x dsize crop (bilinear, black outside the image)."""
    return cv2.warpAffine(img, M_o2c[:2], (dsize, dsize), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _crop_info(img: np.ndarray, pts: np.ndarray, M_o2c: np.ndarray, dsize: int, interp_256: int) -> CropInfo:
    M_o2c = np.vstack([M_o2c[:2], np.array([0, 0, 1], dtype=np.float32)]).astype(np.float32)
    crop = crop_image(img, M_o2c, dsize)
    img_256 = crop if dsize == 256 else cv2.resize(crop, (256, 256), interpolation=interp_256)
    return CropInfo(crop, M_o2c, np.linalg.inv(M_o2c), transform_pts(pts, M_o2c), img_256)


def crop_source(
    img: np.ndarray,
    lmk106: np.ndarray,
    dsize: int = 512,
    scale: float = 2.3,
    vx_ratio: float = 0.0,
    vy_ratio: float = -0.125,
) -> CropInfo:
    """The source-image crop (spec 3.7): rotated, from the 106 points; img_256 is its INTER_AREA downscale.

    The official source crop drops vx_ratio on the way to the transform (spec 3.5 quirk), so it is always 0
    there. That is a plain bug, and we honour vx_ratio; with vx_ratio=0 the result equals the official one.
    """
    M_o2c, _ = crop_transform(lmk106, dsize, scale, vx_ratio, vy_ratio, rotate=True)
    return _crop_info(img, lmk106, M_o2c, dsize, cv2.INTER_AREA)


def driving_box(lmk203: np.ndarray, scale: float = 2.2, vx_ratio: float = 0.0, vy_ratio: float = -0.1) -> np.ndarray:
    """Axis-aligned square box (x1, y1, x2, y2) for the driving crop: the centre comes from the rotated frame,
    the box itself is not rotated (spec 3.7). vx_ratio is honoured here too (the official code drops it)."""
    centre, size, _ = parse_rect_from_landmark(lmk203, scale, vx_ratio, vy_ratio)
    half = size / 2
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])


def box_o2c(box: np.ndarray, dsize: int) -> np.ndarray:
    """3x3 original->crop matrix of an axis-aligned square box (x1, y1, x2, y2) cropped to dsize."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return similarity_o2c(np.array([(x1 + x2) / 2, (y1 + y2) / 2]), x2 - x1, 0.0, dsize)


def crop_box(img: np.ndarray, box: np.ndarray, pts: np.ndarray, dsize: int = 512) -> CropInfo:
    """Crop a square box to dsize without rotation, then resize to 256 with INTER_LINEAR (spec 3.7)."""
    return _crop_info(img, pts, box_o2c(box, dsize), dsize, cv2.INTER_LINEAR)

