"""Image input normalisation: every accepted form becomes RGB uint8, every bad one a one-line message."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.images import ImageInputError, limit_size, load_image, to_rgb_uint8


def test_grey_is_replicated_to_three_channels() -> None:
    grey = np.arange(64 * 48, dtype=np.uint8).reshape(48, 64)
    for img in (grey, grey[..., None]):
        out = to_rgb_uint8(img)
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8
        assert all(np.array_equal(out[..., c], grey) for c in range(3))


def test_rgba_drops_alpha_without_compositing() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0  # fully transparent
    out = to_rgb_uint8(rgba)
    assert out.shape == (40, 40, 3)
    assert out[0, 0].tolist() == [200, 100, 50]


def test_16_bit_scales_65535_to_255() -> None:
    img = np.zeros((32, 32, 3), np.uint16)
    img[0, :4, 0] = [65535, 0, 100 * 257, 128 * 257]
    img[0, 4, 0] = 32767  # 127.498 -> 127
    out = to_rgb_uint8(img)
    assert out[0, :5, 0].tolist() == [255, 0, 100, 128, 127]


def test_float_in_unit_range() -> None:
    img = np.zeros((32, 32), np.float32)
    img[0, :4] = [0.0, 1.0, 0.5, 0.2]
    out = to_rgb_uint8(img)
    assert out[0, :4, 1].tolist() == [0, 255, 128, 51]


def test_float_out_of_range_is_rejected_with_the_fix() -> None:
    img = np.full((32, 32, 3), 255.0)
    with pytest.raises(ImageInputError) as err:
        to_rgb_uint8(img)
    assert str(err.value) == (
        "float image values span [255, 255]; float images must be in [0, 1] (divide 0..255 data by 255)"
    )


def test_nan_is_rejected() -> None:
    img = np.zeros((32, 32, 3), np.float32)
    img[3, 3, 0] = np.nan
    with pytest.raises(ImageInputError, match="NaN or infinite"):
        to_rgb_uint8(img)


def test_wide_integers_accepted_only_in_byte_range() -> None:
    img = np.full((32, 32, 3), 7, np.int64)
    assert to_rgb_uint8(img)[0, 0].tolist() == [7, 7, 7]
    img[0, 0, 0] = 300
    with pytest.raises(ImageInputError) as err:
        to_rgb_uint8(img)
    assert str(err.value) == "int64 image values span [7, 300]; integer images must be uint8, uint16 or in 0..255"


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1), (0, 0, 3), (31, 500, 3)])
def test_too_small_images_are_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ImageInputError) as err:
        to_rgb_uint8(np.zeros(shape, np.uint8))
    assert str(err.value) == f"image is {shape[1]}x{shape[0]} pixels; use an image of at least 32x32 pixels"


@pytest.mark.parametrize("shape", [(32, 32, 2), (32, 32, 5), (32,), (2, 32, 32, 3)])
def test_wrong_layout_is_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ImageInputError) as err:
        to_rgb_uint8(np.zeros(shape, np.uint8))
    assert str(err.value) == (
        f"image has shape {shape}; expected HxW (grey), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)"
    )


@pytest.mark.parametrize("dtype", [bool, complex, object])
def test_non_numeric_dtypes_are_rejected(dtype: type) -> None:
    with pytest.raises(ImageInputError, match="is not numeric pixel data; give uint8, uint16 or float in"):
        to_rgb_uint8(np.zeros((32, 32, 3), dtype))


def test_non_array_is_rejected() -> None:
    with pytest.raises(ImageInputError, match=r"image is a list; give a numpy array \(HxWx3 RGB\)"):
        to_rgb_uint8([[0] * 32] * 32)  # type: ignore[arg-type]


def test_huge_image_is_limited_to_1280() -> None:
    out = limit_size(np.zeros((8000, 8000, 3), np.uint8))
    assert out.shape == (1280, 1280, 3)
    assert limit_size(np.zeros((6001, 8000, 3), np.uint8)).shape == (960, 1280, 3)


def test_odd_sides_are_trimmed_to_even() -> None:
    img = np.arange(77 * 101, dtype=np.uint8).reshape(77, 101)
    out = limit_size(img)
    assert out.shape == (76, 100)
    assert np.array_equal(out, img[:76, :100])


def test_load_image_bgr_file_becomes_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((40, 50, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    assert load_image(tmp_path / "blue.png")[0, 0].tolist() == [0, 0, 255]


def test_load_image_rgba_and_16_bit_grey(tmp_path: Path) -> None:
    bgra = np.zeros((40, 50, 4), np.uint8)
    bgra[..., 2], bgra[..., 3] = 255, 10  # red, nearly transparent
    cv2.imwrite(str(tmp_path / "red.png"), bgra)
    assert load_image(tmp_path / "red.png")[5, 5].tolist() == [255, 0, 0]
    grey16 = np.full((40, 50), 200 * 257, np.uint16)
    cv2.imwrite(str(tmp_path / "grey16.png"), grey16)
    out = load_image(tmp_path / "grey16.png")
    assert out.shape == (40, 50, 3) and out[0, 0].tolist() == [200, 200, 200]


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal APP1 EXIF segment holding only the orientation tag after the JPEG's SOI marker."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    ok, jpeg = cv2.imencode(".jpg", np.zeros((40, 60, 3), np.uint8))
    assert ok
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_exif_orientation(jpeg.tobytes(), 6))  # 6 = rotate 90 degrees clockwise to view
    assert load_image(path).shape == (60, 40, 3)


def test_load_image_missing_and_undecodable(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError) as err:
        load_image(tmp_path / "nope.jpg")
    assert str(err.value) == f"image file {tmp_path / 'nope.jpg'} does not exist; check the path"
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageInputError) as err:
        load_image(tmp_path / "notes.jpg")
    assert str(err.value) == (
        f"{tmp_path / 'notes.jpg'} could not be decoded as an image; use a .jpg, .png, .bmp or .webp file"
    )


def test_load_real_portrait(media_dir: Path) -> None:
    img = load_image(media_dir / "portraits" / "s6.jpg")
    assert img.shape == (725, 725, 3) and img.dtype == np.uint8
    assert np.array_equal(img, cv2.imread(str(media_dir / "portraits" / "s6.jpg"))[..., ::-1])
