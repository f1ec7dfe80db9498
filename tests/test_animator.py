"""The animation core on real media with the reduced fake models: crops, motion math through the networks,
paste-back, and process()'s batch behaviour. Fake weights make the pixels meaningless; geometry and math are real.
Tests of paste-back and batching take the fingerprint_warp stand-in for the warp and decode (seconds a frame here):
their crops are fingerprints of the warp's inputs."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.images import ImageInputError
from core.images import SourceError
from core.motion import Motion, apply_stitching, kp_delta, lip_input, relative_motion, stitching_input
from core.options import ProcessOptions
from core.crop import transform_pts
from core.paste import OUT_SIZE, output_to_original
from core.animator import Animator
from core.portrait import SourcePortrait
from render.offline import array_clip, driving_frames, process

PLAIN = ProcessOptions(lip_zero=False, stitching=False)


def output_frame_box(src: SourcePortrait) -> np.ndarray:
    """Corners of the animated 512 crop in the original image, 4x2 pixels."""
    corners = np.array([[0, 0], [OUT_SIZE, 0], [OUT_SIZE, OUT_SIZE], [0, OUT_SIZE]], dtype=np.float64)
    return transform_pts(corners, output_to_original(src.M_c2o, src.dsize))


@pytest.fixture(scope="module")
def source(animator: Animator, portrait: np.ndarray):
    return animator.prepare_source(portrait, ProcessOptions())


def test_source_crop_is_stable_and_maps_back_onto_the_face(animator: Animator, portrait: np.ndarray, source) -> None:
    again = animator.prepare_source(portrait, ProcessOptions())
    np.testing.assert_array_equal(again.M_c2o, source.M_c2o)
    np.testing.assert_array_equal(again.f_s, source.f_s)
    quad = output_frame_box(source)
    x1, y1, x2, y2 = source.face_box
    # the face box lies inside the pasted crop, and the crop (scale 2.3) is wider than the face
    assert quad[:, 0].min() < x1 and quad[:, 0].max() > x2 and quad[:, 1].min() < y1 and quad[:, 1].max() > y2
    crop_side = np.linalg.norm(quad[1] - quad[0])
    assert 1.5 * (x2 - x1) < crop_side < 4.0 * (x2 - x1)
    assert source.f_s.shape[2:] == (16, 64, 64)
    assert source.crop.img.shape == (512, 512, 3) and source.crop.img_256.shape == (256, 256, 3)


def test_dsize_changes_the_crop_resolution_not_the_paste_place(animator: Animator, portrait: np.ndarray, source) -> None:
    small = animator.prepare_source(portrait, ProcessOptions(dsize=256))
    assert small.crop.img.shape == (256, 256, 3)
    np.testing.assert_allclose(output_frame_box(small), output_frame_box(source), atol=0.5)


def test_first_frame_as_reference_reproduces_the_source_keypoints(animator: Animator, source, first_frames) -> None:
    frames = list(driving_frames(animator, array_clip(first_frames[:3])))
    first = animator.driving_motion(frames[0])
    x_d = animator.keypoints(source, first, first, PLAIN)
    np.testing.assert_allclose(x_d, source.x_s, atol=1e-6)
    later = animator.driving_motion(frames[2])
    assert np.abs(animator.keypoints(source, later, first, PLAIN) - source.x_s).max() > 1e-4


def test_stitching_adds_exactly_the_stitching_network_delta(animator: Animator, source, first_frames) -> None:
    frames = list(driving_frames(animator, array_clip(first_frames[:3])))
    ref, drv = (animator.driving_motion(frames[i]) for i in (0, 2))
    x_d = animator.keypoints(source, drv, ref, PLAIN)
    stitched = animator.keypoints(source, drv, ref, replace(PLAIN, stitching=True))
    delta = animator.nets.runners["stitching"].infer({"x": stitching_input(source.x_s, x_d)})["delta"][0]
    expected = x_d + delta[:63].reshape(21, 3)
    expected[:, :2] += delta[63:65]
    np.testing.assert_allclose(stitched, expected, atol=1e-6)
    np.testing.assert_allclose(stitched, apply_stitching(x_d, delta[None]), atol=1e-6)


def test_animation_region_and_driving_multiplier_reach_the_keypoints(animator: Animator, source, first_frames) -> None:
    frames = list(driving_frames(animator, array_clip(first_frames[:3])))
    ref, drv = (animator.driving_motion(frames[i]) for i in (0, 2))
    for region in ("exp", "pose", "lip"):
        np.testing.assert_array_equal(animator.keypoints(source, drv, ref, replace(PLAIN, animation_region=region)),
                                      relative_motion(source.info, drv, ref, region))
    full = animator.keypoints(source, drv, ref, ProcessOptions())
    half = animator.keypoints(source, drv, ref, ProcessOptions(driving_multiplier=0.5))
    np.testing.assert_allclose(half, source.x_s + (full - source.x_s) * 0.5, atol=1e-6)


@pytest.mark.parametrize("c_s_lip, mouth_open", [(None, True), (0.0299, False), (0.0301, True)])
def test_lip_zero_adds_the_closing_delta_only_for_an_open_source_mouth(
    animator: Animator, portrait: np.ndarray, monkeypatch: pytest.MonkeyPatch, c_s_lip: float | None, mouth_open: bool
) -> None:
    """None: the portrait's own lip ratio (open with the stand-in landmarks); else a forced ratio around the
    official lip_normalize_threshold of 0.03."""
    if c_s_lip is not None:
        monkeypatch.setattr("core.animator.lip_ratio", lambda lmk: np.array([c_s_lip], np.float32))
    source = animator.prepare_source(portrait, ProcessOptions())
    assert (source.c_s_lip >= 0.03) == mouth_open
    motion = Motion(R=source.info.R, exp=source.info.exp, scale=source.info.scale, t=source.info.t)
    off = animator.keypoints(source, motion, motion, PLAIN)
    on = animator.keypoints(source, motion, motion, replace(PLAIN, lip_zero=True))
    if mouth_open:
        closing = animator.nets.runners["lip"].infer({"x": lip_input(source.x_s, source.c_s_lip, 0.0)})["delta"]
        np.testing.assert_allclose(on - off, kp_delta(closing), atol=1e-6)
        assert np.abs(on - off).max() > 1e-4
    else:
        np.testing.assert_array_equal(on, off)
    absolute = replace(PLAIN, lip_zero=True, relative=False)  # lip_zero applies to relative motion only
    np.testing.assert_array_equal(animator.keypoints(source, motion, motion, absolute),
                                  animator.keypoints(source, motion, motion, replace(PLAIN, relative=False)))


def test_lip_retargeting_moves_only_by_the_lip_delta_of_the_scaled_ratios(
    animator: Animator, source, first_frames
) -> None:
    frames = list(driving_frames(animator, array_clip(first_frames[:3])))
    ref, drv = (animator.driving_motion(frames[i]) for i in (0, 2))
    options = replace(PLAIN, lip_retargeting=True, lip_retargeting_multiplier=0.5)
    x_d = animator.keypoints(source, drv, ref, options)
    ratios = np.array([[source.c_s_lip, drv.lip_ratio[0]]], dtype=np.float32) * 0.5
    feed = np.concatenate([source.x_s.reshape(1, 63), ratios], axis=1)
    delta = animator.nets.runners["lip"].infer({"x": feed})["delta"].reshape(21, 3)
    np.testing.assert_allclose(x_d, source.x_s + delta, atol=1e-6)


def test_eye_retargeting_with_relative_motion_moves_only_by_the_eye_delta(animator: Animator, source, first_frames) -> None:
    frames = list(driving_frames(animator, array_clip(first_frames[:3])))
    ref, drv = (animator.driving_motion(frames[i]) for i in (0, 2))
    assert drv.eye_ratio is not None and drv.lip_ratio is not None
    options = replace(PLAIN, eye_retargeting=True, eyes_retargeting_multiplier=2.0)
    x_d = animator.keypoints(source, drv, ref, options)
    ratios = np.array([[*source.c_s_eyes, drv.eye_ratio[0]]], dtype=np.float32) * 2.0
    feed = np.concatenate([source.x_s.reshape(1, 63), ratios], axis=1)
    delta = animator.nets.runners["eye"].infer({"x": feed})["delta"].reshape(21, 3)
    np.testing.assert_allclose(x_d, source.x_s + delta, atol=1e-6)


def test_identity_driving_leaves_the_photo_unchanged_outside_the_mask(
    animator: Animator, portrait: np.ndarray, first_frames, fingerprint_warp: None
) -> None:
    """The paste-back of the crops (fingerprints of the warp's inputs) into the photo."""
    still = [first_frames[0]] * 2
    crops, fulls = process([portrait], still, ProcessOptions(), animator)
    assert crops.shape == (2, 512, 512, 3) and fulls.shape == (2, *portrait.shape)
    src = animator.prepare_source(portrait, ProcessOptions())
    outside = src.mask[..., 0] == 0
    assert outside.mean() > 0.2  # the check covers a real part of the photo
    np.testing.assert_array_equal(fulls[0][outside], portrait[outside])
    np.testing.assert_array_equal(fulls[0], fulls[1])  # same motion, same frame
    inside = src.mask[..., 0] == 1
    assert np.abs(fulls[0][inside].astype(int) - portrait[inside]).mean() > 1  # the face was replaced


def test_process_batches_sources_then_driving_frames_in_order(
    animator: Animator, load_portrait, first_frames, fingerprint_warp: None
) -> None:
    """Which source meets which frame, in which order: the crops are fingerprints of the warp's inputs."""
    a, b = load_portrait("s0.jpg"), load_portrait("s5.jpg")
    progress: list[tuple[int, int]] = []
    crops, fulls = process([a, b], first_frames[:2], ProcessOptions(), animator, lambda *p: progress.append(p))
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert crops.shape == (4, 512, 512, 3)
    assert [f.shape for f in fulls] == [a.shape, a.shape, b.shape, b.shape]  # a list: two sizes cannot stack
    single, _ = process([b], first_frames[:2], ProcessOptions(), animator)
    np.testing.assert_array_equal(crops[2:], single)


def test_odd_source_formats_animate_exactly_like_their_rgb_conversion(
    animator: Animator, portrait: np.ndarray, fingerprint_warp: None
) -> None:
    """Every input of the warp (features, keypoints: the crops are their fingerprints) and the pasted frames are
    those of the RGB conversion."""
    gray = portrait.mean(axis=2).astype(np.uint8)
    rgba = np.dstack([portrait, np.full(portrait.shape[:2], 255, np.uint8)])
    deep = portrait.astype(np.uint16) * 257  # 16-bit: exactly the 8-bit portrait scaled by 65535 / 255
    driving = [portrait]
    crops, fulls = process([gray, rgba, deep], driving, ProcessOptions(), animator)
    ref_crops, ref_fulls = process([np.repeat(gray[..., None], 3, axis=2), portrait], driving, ProcessOptions(), animator)
    for got, expected in ((0, 0), (1, 1), (2, 1)):  # grey -> its 3-channel copy; RGBA and 16-bit -> the portrait
        np.testing.assert_array_equal(crops[got], ref_crops[expected])
        np.testing.assert_array_equal(fulls[got], ref_fulls[expected])
    assert not np.array_equal(crops[0], crops[1])  # grey really differs from colour: the checks compare something


def test_huge_source_is_pasted_back_at_full_size(animator: Animator, portrait: np.ndarray) -> None:
    import cv2

    huge = cv2.resize(portrait, (8000, 8000 * portrait.shape[0] // portrait.shape[1]))
    src = animator.prepare_source(huge, ProcessOptions())
    small = animator.prepare_source(portrait, ProcessOptions())
    factor = huge.shape[1] / portrait.shape[1]
    np.testing.assert_allclose(output_frame_box(src) / factor, output_frame_box(small), atol=6.0)
    assert src.mask.shape[:2] == huge.shape[:2]


def test_bad_sources_get_clear_errors(animator: Animator) -> None:
    with pytest.raises(SourceError, match="no face found in the portrait"):
        animator.prepare_source(np.full((400, 300, 3), 128, np.uint8), ProcessOptions())
    with pytest.raises(ImageInputError, match="image is 1x1 pixels; use an image of at least 32x32 pixels"):
        process([np.zeros((1, 1, 3), np.uint8)], [np.zeros((64, 64, 3), np.uint8)], ProcessOptions(), animator)
    with pytest.raises(ValueError, match="dsize must be between 64 and 2048"):
        ProcessOptions(dsize=4096)


def test_a_single_driving_image_copies_its_expression_relative_to_the_neutral_lip_array(
    animator: Animator, source, first_frames
) -> None:
    from core.motion import LIP_ARRAY, image_reference, transform_kp

    (frame,) = driving_frames(animator, array_clip(first_frames[2:3]))
    drv = animator.driving_motion(frame)
    x_d = animator.keypoints(source, drv, image_reference(drv), PLAIN)
    info = source.info
    expected = transform_kp(info.kp, info.R, info.exp + drv.exp - LIP_ARRAY, info.scale, info.t)  # source pose kept
    np.testing.assert_allclose(x_d, expected, atol=1e-5)
    assert np.abs(x_d - source.x_s).max() > 1e-4  # the image's expression arrives; the old code left it still
    assert LIP_ARRAY.shape == (21, 3) and LIP_ARRAY.dtype == np.float32 and np.count_nonzero(LIP_ARRAY) == 63


def test_a_failed_open_closes_what_was_already_open(reduced_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from engines.ort import OrtRunner
    from engines.layout import MODEL_FILES

    closed: list[str] = []
    real_close = OrtRunner.close
    monkeypatch.setattr(OrtRunner, "close", lambda self: (closed.append(self.path.name), real_close(self)))
    broken = tmp_path / "models"
    shutil.copytree(reduced_models, broken)
    (broken / MODEL_FILES["landmark"]).write_bytes(b"not an onnx file")
    with pytest.raises(Exception, match="landmark.onnx could not be loaded"):
        Animator(broken, "cpu")
    # the seven networks and the two face models opened before landmark.onnx failed were all closed
    assert sorted(closed) == sorted(name for key, name in MODEL_FILES.items() if key != "landmark")
