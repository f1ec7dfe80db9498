"""Image input normalisation: whatever the user hands us becomes one RGB uint8 HxWx3 array, or a clear error."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

#: smallest side we accept: the detector letterboxes to 512 and a face needs some pixels to be found
MIN_SIDE = 32


class ImageInputError(ValueError):
    """An image cannot be used; the message names the problem and the fix."""


def _check_shape(img: np.ndarray) -> None:
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise ImageInputError(
            f"image has shape {img.shape}; expected HxW (grey), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)"
        )
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(f"image is {w}x{h} pixels; use an image of at least {MIN_SIDE}x{MIN_SIDE} pixels")


def _to_uint8_values(img: np.ndarray) -> np.ndarray:
    """Map the pixel values of any supported dtype onto 0..255 uint8."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if img.dtype.kind == "f":
        if not np.isfinite(img).all():
            raise ImageInputError("image contains NaN or infinite values; give finite pixel values in [0, 1]")
        lo, hi = float(img.min()), float(img.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ImageInputError(
                f"float image values span [{lo:g}, {hi:g}]; float images must be in [0, 1] (divide 0..255 data by 255)"
            )
        return np.rint(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    lo, hi = int(img.min()), int(img.max())  # any other integer type: accepted when it holds 0..255 values
    if lo < 0 or hi > 255:
        raise ImageInputError(
            f"{img.dtype} image values span [{lo}, {hi}]; integer images must be uint8, uint16 or in 0..255"
        )
    return img.astype(np.uint8)


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Normalise an RGB-ordered image array to contiguous HxWx3 uint8.

    Grey is replicated to three channels. RGBA loses its alpha channel without compositing: the official
    loader (cv2.imread with IMREAD_COLOR) drops alpha the same way, so transparent sources crop and animate
    exactly as they do there.
    """
    if not isinstance(img, np.ndarray):
        raise ImageInputError(f"image is a {type(img).__name__}; give a numpy array (HxWx3 RGB)")
    if img.dtype.kind not in "uif":
        raise ImageInputError(
            f"image dtype {img.dtype} is not numeric pixel data; give uint8, uint16 or float in [0, 1]"
        )
    _check_shape(img)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    img = _to_uint8_values(img)
    if img.ndim == 2 or img.shape[2] == 1:
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    return np.ascontiguousarray(img)


def load_image(path: Path | str) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3.

    The decode keeps 16-bit depth and grey (ANYDEPTH | ANYCOLOR) but, unlike IMREAD_UNCHANGED, still applies
    the EXIF orientation, as the official IMREAD_COLOR loader does; np.fromfile + imdecode also reads
    non-ASCII paths, which cv2.imread cannot on Windows.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"image file {path} does not exist; check the path")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if img is None:
        raise ImageInputError(f"{path} could not be decoded as an image; use a .jpg, .png, .bmp or .webp file")
    if img.ndim == 3 and img.shape[2] >= 3:
        img = img[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
    return to_rgb_uint8(img)


def limit_size(img: np.ndarray, max_dim: int = 1280, division: int = 2) -> np.ndarray:
    """The official source pre-resize (spec 3.6): fit the longer side to max_dim, then trim both sides to a
    multiple of `division`. Huge inputs (8000x8000) become cheap to crop and paste back."""
    h, w = img.shape[:2]
    if max_dim > 0 and max(h, w) > max_dim:
        if h > w:
            size = (int(w * (max_dim / h)), max_dim)
        else:
            size = (max_dim, int(h * (max_dim / w)))
        img = cv2.resize(img, size)
    division = max(division, 1)
    new_h = img.shape[0] - img.shape[0] % division
    new_w = img.shape[1] - img.shape[1] % division
    if new_h == 0 or new_w == 0:
        return img
    return np.ascontiguousarray(img[:new_h, :new_w])


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fit `image` inside width x height keeping its aspect ratio, centred on black."""
    h, w = image.shape[:2]
    s = min(width / w, height / h)
    new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    canvas = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - new_w) // 2, (height - new_h) // 2
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = cv2.resize(image, (new_w, new_h), interpolation=interp)
    return canvas


class SourceError(ValueError):
    """The portrait cannot be animated (no face, unreadable, wrong format); the message says what to do."""


def check_image(image: np.ndarray, what: str) -> None:
    """Raise SourceError unless `image` is an RGB uint8 HxWx3 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise SourceError(f"{what} must be an RGB uint8 image of shape HxWx3, got {dtype} {shape}")
