"""Paste-back (spec 8): put the animated 512x512 crop back into the original photo through a feathered mask.

The animated crop is always 512x512 while the source crop was made at dsize, so M_c2o (crop of side dsize
-> original) is scaled by dsize/512 first. The official code skips that step, which misplaces the paste for
any dsize other than 512; at dsize 512 the two agree.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

#: the animated crop's side, fixed by the generator
OUT_SIZE = 512
#: the official paste-back mask (MIT, KwaiVGI; see core/resources/README.md)
MASK_TEMPLATE = Path(__file__).resolve().parent / "resources" / "mask_template.png"


class PasteError(ValueError):
    """Paste-back inputs do not fit together (mask and frame sizes differ)."""


@functools.cache
def mask_template() -> np.ndarray:
    """The official feather mask (core/resources/mask_template.png, 512x512 uint8: 0 outside, 255 inside), read
    once. Read-only: every prepared mask is a warped copy of it."""
    mask = cv2.imread(str(MASK_TEMPLATE), cv2.IMREAD_GRAYSCALE)
    if mask is None or mask.shape != (OUT_SIZE, OUT_SIZE):
        raise PasteError(f"{MASK_TEMPLATE} is missing or damaged; restore it from the repository")
    mask.setflags(write=False)
    return mask


def output_to_original(M_c2o: np.ndarray, dsize: int, out_size: int = OUT_SIZE) -> np.ndarray:
    """3x3 matrix from the out_size animated crop to the original image, given the dsize source crop's M_c2o."""
    k = dsize / out_size
    return (np.asarray(M_c2o, dtype=np.float64) @ np.diag([k, k, 1.0])).astype(np.float32)


def prepare_paste_mask(M_c2o: np.ndarray, src_shape: tuple[int, ...], dsize: int = OUT_SIZE) -> np.ndarray:
    """The template mask warped into the original image (float32 HxWx1 in [0, 1]); once per source image.

    Like the official code, the 8-bit template is warped and then divided by 255: the integer interpolation keeps
    the inside exactly 1.0, which lets paste_back copy those pixels unblended.
    """
    h, w = src_shape[:2]
    M = output_to_original(M_c2o, dsize)
    mask = cv2.warpAffine(mask_template(), M[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return (mask.astype(np.float32) / np.float32(255))[..., None]


def _paste_region(M: np.ndarray, side: int, w: int, h: int) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) of the original image that the warped crop can touch, clipped to the image."""
    corners = np.array([[0, 0], [side, 0], [0, side], [side, side]], dtype=np.float64) - 0.5
    pts = corners @ M[:2, :2].T.astype(np.float64) + M[:2, 2]
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 2
    return max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)


def paste_back(
    crop_rgb: np.ndarray, M_c2o: np.ndarray, full_rgb: np.ndarray, mask: np.ndarray, dsize: int | None = None
) -> np.ndarray:
    """Blend the animated crop into the original frame: mask*warped + (1-mask)*original, clipped, truncated.

    M_c2o and dsize describe the source crop (dsize defaults to the crop's own side). The result equals that
    formula in float32 for every pixel, but only the feather band is computed: outside the warped crop's box
    the mask is 0 (frame kept), where it is exactly 1 the warped crop is copied, so a 1280-px frame costs one
    box-sized warp and a thin ring of arithmetic.
    """
    h, w = full_rgb.shape[:2]
    if mask.shape[:2] != (h, w):
        raise PasteError(
            f"paste mask is {mask.shape[1]}x{mask.shape[0]} but the frame is {w}x{h}; "
            "call prepare_paste_mask again for this source image"
        )
    side = crop_rgb.shape[0]
    M = output_to_original(M_c2o, dsize or side, side)
    x0, y0, x1, y1 = _paste_region(M, side, w, h)
    out = full_rgb.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    shift = np.array([[1, 0, -x0], [0, 1, -y0]], dtype=np.float32)
    warped = cv2.warpAffine(crop_rgb, shift @ M, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
    m = mask[y0:y1, x0:x1, 0]
    region = cv2.copyTo(warped, (m == 1).view(np.uint8), np.ascontiguousarray(out[y0:y1, x0:x1]))
    ys, xs = np.nonzero((m > 0) & (m < 1))  # the feather ring: a few percent of the box
    mb = m[ys, xs][:, None]
    blended = mb * warped[ys, xs] + (np.float32(1) - mb) * region[ys, xs]
    region[ys, xs] = np.clip(blended, 0, 255).astype(np.uint8)
    out[y0:y1, x0:x1] = region
    return out
