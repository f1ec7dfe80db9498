"""Paste-back (spec 8): the mask template, where the crop lands, and the identity paste."""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from export.face_standins import mean_face_106
from tests.conftest import FIXTURES
from core.crop import crop_source
from core.paste import PasteError, mask_template, output_to_original, paste_back, prepare_paste_mask

#: a 512 crop of the original region x 100..356, y 50..306 (scale 2)
M_O2C = np.array([[2, 0, -200], [0, 2, -100], [0, 0, 1]], np.float32)
M_C2O = np.linalg.inv(M_O2C)


def test_mask_template_is_the_official_one() -> None:
    """The shipped copy is the official mask_template.png, pixel for pixel (the fixture is the official file)."""
    mask = mask_template()
    assert mask.shape == (512, 512) and mask.dtype == np.uint8 and not mask.flags.writeable
    assert mask[256, 0] == 0 and mask[256, 256] == 255 and mask[0, 0] == 0
    official = FIXTURES / "official_constants" / "mask_template.png"
    if official.is_file():
        assert np.array_equal(mask, cv2.imread(str(official), cv2.IMREAD_GRAYSCALE))
        # the official code reads it as colour: three equal channels, so one grey channel is the same mask
        colour = cv2.imread(str(official), cv2.IMREAD_COLOR)
        assert all(np.array_equal(colour[..., c], mask) for c in range(3))


def test_prepare_paste_mask_is_the_official_warp() -> None:
    """At dsize 512 the prepared mask is exactly the official one: the 8-bit template warped, divided by 255."""
    mask = prepare_paste_mask(M_C2O, (400, 500, 3))
    official = cv2.warpAffine(np.dstack([mask_template()] * 3), M_C2O[:2], (500, 400), flags=cv2.INTER_LINEAR)
    assert np.array_equal(mask[..., 0], official[..., 0].astype(np.float32) / np.float32(255))


def test_prepare_paste_mask_places_the_template() -> None:
    mask = prepare_paste_mask(M_C2O, (400, 500, 3))
    assert mask.shape == (400, 500, 1) and mask.dtype == np.float32
    assert mask[:50].max() == 0 and mask[:, :100].max() == 0 and mask[307:].max() == 0 and mask[:, 357:].max() == 0
    assert mask[60:297, 110:347].min() == 1.0  # the template's flat top, 8 px in from the region's edges
    assert mask[178, 104] == pytest.approx(mask_template()[256, 8] / 255, abs=0.05)


def test_crop_lands_on_its_region() -> None:
    crop = np.zeros((512, 512, 3), np.uint8)
    crop[128:256, 256:384] = (255, 0, 0)  # maps to x 228..292, y 114..178
    full = np.full((400, 500, 3), 30, np.uint8)
    out = paste_back(crop, M_C2O, full, prepare_paste_mask(M_C2O, full.shape))
    assert out[116:176, 230:290, 0].min() == 255 and out[116:176, 230:290, 1].max() == 0
    assert out[60:110, 110:347].max() == 0  # inside the region the black crop replaced the grey frame
    assert np.array_equal(out[:50], full[:50]) and np.array_equal(out[:, 357:], full[:, 357:])


def test_region_blend_matches_the_full_frame_formula() -> None:
    """The official paste: warp the crop into the whole frame, blend, clip, truncate. We warp and blend the box
    only; OpenCV's 1/32-pixel fixed-point sample positions then round differently for a few pixels."""
    yy, xx = np.mgrid[:512, :512]
    crop = np.stack([127 + 120 * np.sin(xx / 9.0), 127 + 120 * np.cos(yy / 7.0), (xx + yy) / 4], -1).astype(np.uint8)
    full = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    theta = 0.3
    M_c2o = np.array([[0.4 * np.cos(theta), -0.4 * np.sin(theta), 250], [0.4 * np.sin(theta), 0.4 * np.cos(theta), 60],
                      [0, 0, 1]], np.float32)
    mask = prepare_paste_mask(M_c2o, full.shape)
    warped = cv2.warpAffine(crop, M_c2o[:2], (640, 480), flags=cv2.INTER_LINEAR)
    expected = np.clip(mask * warped + (1 - mask) * full, 0, 255).astype(np.uint8)
    out = paste_back(crop, M_c2o, full, mask)
    diff = np.abs(out.astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_identity_paste_of_a_real_portrait(load_portrait) -> None:
    img = load_portrait("s6.jpg")
    lmk = mean_face_106() * 250 + (360, 330)
    info = crop_source(img, lmk)
    mask = prepare_paste_mask(info.M_c2o, img.shape)
    out = paste_back(info.img, info.M_c2o, img, mask)
    outside = mask[..., 0] == 0
    assert outside.mean() > 0.2 and np.array_equal(out[outside], img[outside])
    inside = mask[..., 0] == 1
    err = np.abs(out[inside].astype(int) - img[inside])
    assert err.mean() < 2.0 and np.percentile(err, 99) < 25


def test_source_crop_at_other_dsize_pastes_to_the_same_place() -> None:
    img = np.zeros((600, 600, 3), np.uint8)
    lmk = mean_face_106() * 150 + (300, 280)
    c256, c512 = crop_source(img, lmk, dsize=256), crop_source(img, lmk, dsize=512)
    np.testing.assert_allclose(output_to_original(c256.M_c2o, 256), c512.M_c2o, rtol=1e-5, atol=1e-3)
    m256, m512 = prepare_paste_mask(c256.M_c2o, img.shape, 256), prepare_paste_mask(c512.M_c2o, img.shape, 512)
    assert np.abs(m256 - m512).max() < 1e-3
    crop = np.random.default_rng(2).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    a = paste_back(crop, c256.M_c2o, img, m256, dsize=256)
    b = paste_back(crop, c512.M_c2o, img, m512)
    assert np.abs(a.astype(int) - b).max() <= 1


def test_mask_of_another_frame_size_is_rejected() -> None:
    mask = prepare_paste_mask(M_C2O, (400, 500))
    with pytest.raises(PasteError) as err:
        paste_back(np.zeros((512, 512, 3), np.uint8), M_C2O, np.zeros((300, 500, 3), np.uint8), mask)
    assert str(err.value) == (
        "paste mask is 500x400 but the frame is 500x300; call prepare_paste_mask again for this source image"
    )


def test_crop_outside_the_frame_leaves_it_unchanged() -> None:
    far = np.array([[0.1, 0, 5000], [0, 0.1, 5000], [0, 0, 1]], np.float32)
    full = np.full((64, 64, 3), 9, np.uint8)
    out = paste_back(np.full((512, 512, 3), 255, np.uint8), far, full, prepare_paste_mask(far, full.shape))
    assert np.array_equal(out, full)
