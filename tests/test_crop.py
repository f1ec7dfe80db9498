"""The landmark crop (spec 3.5-3.7) against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from core.crop import (
    LandmarkError,
    crop_box,
    crop_image,
    crop_source,
    crop_transform,
    driving_box,
    parse_rect_from_landmark,
    transform_pts,
)
from realtime.filters import BoxSmoother


def _face106() -> np.ndarray:
    """106 points: eyes at (40, 50) and (60, 50), lips at (50, 70), extremes (30, 40) and (70, 90).

    Axis-aligned, so the rotated box is x 30..70, y 40..90: centre (50, 65), longer side 50.
    """
    pts = np.full((106, 2), (50.0, 60.0))
    pts[[33, 35, 40, 39]] = (40, 50)
    pts[[87, 89, 94, 93]] = (60, 50)
    pts[[52, 61]] = (50, 70)
    pts[0], pts[1] = (30, 40), (70, 90)
    return pts


def _rotate(pts: np.ndarray, theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return pts @ np.array([[c, -s], [s, c]]).T


def test_upright_rect_by_hand() -> None:
    centre, size, angle = parse_rect_from_landmark(_face106(), scale=2.0, vy_ratio=-0.1)
    assert size == pytest.approx(100.0)
    assert angle == 0.0
    np.testing.assert_allclose(centre, [50.0, 55.0])  # (50, 65) moved up by 0.1 * 100


def test_rotated_face_gives_its_angle_and_rotated_centre() -> None:
    theta = np.deg2rad(30)
    centre, size, angle = parse_rect_from_landmark(_rotate(_face106(), theta), scale=2.0, vy_ratio=-0.1)
    assert angle == pytest.approx(theta)
    assert size == pytest.approx(100.0)
    np.testing.assert_allclose(centre, _rotate(np.array([[50.0, 55.0]]), theta)[0], atol=1e-9)
    _, _, negative = parse_rect_from_landmark(_rotate(_face106(), -theta), scale=2.0)
    assert negative == pytest.approx(-theta)


def test_vx_ratio_moves_the_centre_along_ux() -> None:
    theta = np.deg2rad(-20)
    pts = _rotate(_face106(), theta)
    c0, size, _ = parse_rect_from_landmark(pts, scale=2.3, vx_ratio=0.0, vy_ratio=-0.125)
    c1, _, _ = parse_rect_from_landmark(pts, scale=2.3, vx_ratio=0.2, vy_ratio=-0.125)
    ux = np.array([np.cos(theta), np.sin(theta)])
    np.testing.assert_allclose(c1 - c0, 0.2 * size * ux, atol=1e-9)


def test_coincident_eyes_and_lips_fall_back_to_upright() -> None:
    pts = np.tile([[10.0, 20.0]], (203, 1))
    pts[100] = (0, 0)
    _, _, angle = parse_rect_from_landmark(pts, scale=1.5)
    assert angle == 0.0


def test_source_crop_matrix_by_hand() -> None:
    """Default source crop (scale 2.3, vy -0.125, vx 0): the official matrix, computed by hand."""
    info = crop_source(np.zeros((200, 200, 3), np.uint8), _face106())
    size = 50 * 2.3
    cx, cy = 50.0, 65.0 - 0.125 * size
    s = 512 / size
    expected = np.array([[s, 0, 256 - s * cx], [0, s, 256 - s * cy], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(info.M_o2c, expected, rtol=1e-6)
    assert info.M_o2c.dtype == np.float32 and info.M_c2o.dtype == np.float32
    np.testing.assert_allclose(info.M_c2o @ info.M_o2c, np.eye(3), atol=1e-5)
    assert info.img.shape == (512, 512, 3) and info.img_256.shape == (256, 256, 3)
    np.testing.assert_allclose(info.lmk[[33, 87]], [[256 + s * (40 - cx), 256 + s * (50 - cy)],
                                                   [256 + s * (60 - cx), 256 + s * (50 - cy)]], rtol=1e-5)


def test_crop_transform_levels_the_eyes_and_inverts() -> None:
    theta = np.deg2rad(25)
    pts = _rotate(_face106(), theta) + (300, 200)
    M_o2c, M_c2o = crop_transform(pts, 224, 1.5, 0.0, -0.1, rotate=True)
    assert M_o2c.shape == (2, 3) and M_c2o.shape == (3, 3)
    np.testing.assert_allclose(M_c2o @ np.vstack([M_o2c, [0, 0, 1]]), np.eye(3), atol=1e-4)  # float32
    eyes = transform_pts(pts[[33, 87]], M_o2c)
    assert eyes[0, 1] == pytest.approx(eyes[1, 1], abs=1e-3)  # roll removed
    assert eyes[1, 0] - eyes[0, 0] == pytest.approx(20 * 224 / 75, rel=1e-5)
    upright, _ = crop_transform(pts, 224, 1.5, 0.0, -0.1, rotate=False)
    assert upright[0, 1] == 0.0 and upright[1, 0] == 0.0


def test_crop_image_cuts_the_right_pixels() -> None:
    img = np.zeros((100, 100, 3), np.uint8)
    img[40:60, 20:30] = (255, 0, 0)
    M = np.array([[2, 0, -20], [0, 2, -60]], np.float32)  # crop starts at (10, 30), 2x zoom
    crop = crop_image(img, M, 64)
    assert crop[20:58, 20:39, 0].min() == 255 and crop[..., 1:].max() == 0
    assert crop[19, 30, 0] == 128 and crop[30, 39, 0] == 128  # half a source pixel: bilinear
    assert crop[:19, :, 0].max() == 0 and crop[:, 40:, 0].max() == 0


def test_repeated_crops_are_identical() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    pts = _rotate(_face106(), 0.3) + 100
    a, b = crop_source(img, pts), crop_source(img, pts)
    assert np.array_equal(a.img, b.img) and np.array_equal(a.M_o2c, b.M_o2c)


def test_unsupported_landmarks_are_rejected() -> None:
    with pytest.raises(LandmarkError) as err:
        crop_transform(np.zeros((68, 2)), 224, 1.5)
    assert str(err.value) == "landmarks have shape (68, 2); the crop needs 106 or 203 points as an (N, 2) array"


def test_driving_box_is_an_upright_square_around_the_rotated_centre() -> None:
    pts = np.zeros((203, 2))
    pts[[0, 6, 12, 18]] = (40, 50)
    pts[[24, 30, 36, 42]] = (60, 50)
    pts[[48, 66]] = (50, 70)
    pts[100], pts[101] = (30, 40), (70, 90)
    theta = np.deg2rad(15)
    box = driving_box(_rotate(pts, theta), scale=2.2, vy_ratio=-0.1)
    centre, size, _ = parse_rect_from_landmark(_rotate(pts, theta), 2.2, 0.0, -0.1)
    np.testing.assert_allclose(box, [*(centre - size / 2), *(centre + size / 2)])
    info = crop_box(np.zeros((200, 200, 3), np.uint8), driving_box(_rotate(pts, theta) + 50), pts)
    assert info.img.shape == (512, 512, 3) and info.img_256.shape == (256, 256, 3)
    assert info.M_o2c[0, 1] == 0.0 and info.M_o2c[1, 0] == 0.0


def test_crop_box_maps_box_corners_to_crop_corners() -> None:
    info = crop_box(np.zeros((100, 100, 3), np.uint8), np.array([10.0, 20.0, 60.0, 70.0]), np.zeros((203, 2)))
    np.testing.assert_allclose(transform_pts(np.array([[10.0, 20.0], [60.0, 70.0]]), info.M_o2c),
                               [[0, 0], [512, 512]], atol=1e-4)


def test_box_smoother_is_causal_exponential() -> None:
    smoother = BoxSmoother(alpha=0.25)
    np.testing.assert_allclose(smoother.update(np.array([0.0, 0.0, 100.0, 100.0])), [0, 0, 100, 100])
    # centre moves 20 -> 5, size grows 40 -> 10
    np.testing.assert_allclose(smoother.update(np.array([0.0, 0.0, 140.0, 140.0])), [0, 0, 110, 110])
    smoother.reset()
    np.testing.assert_allclose(smoother.update(np.array([5.0, 5.0, 15.0, 15.0])), [5, 5, 15, 15])
    with pytest.raises(ValueError, match=r"BoxSmoother alpha must be in \(0, 1\], got 0"):
        BoxSmoother(alpha=0)
