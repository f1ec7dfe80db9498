"""The crop and paste-back graphs against the cv2 code they replace, run with ONNX Runtime; TensorRT-RTX parses
and builds them (its builder runs without a GPU)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engines.image_ops import crop_graph, paste_graph, theta_for, write_image_op
from core.crop import crop_image, similarity_o2c
from core.paste import output_to_original, paste_back, prepare_paste_mask
from core.animator import to_net_input


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def crop_on_graph(image: np.ndarray, M: np.ndarray, size: int = 256) -> np.ndarray:
    """The crop graph's output as an HxWx3 float image in levels (0..255), for comparing with cv2."""
    h, w = image.shape[:2]
    (crop,) = run(crop_graph(h, w, size), {"image": image[None], "theta": theta_for(M, (h, w), size)})
    return crop[0].transpose(1, 2, 0) * 255


def test_theta_of_the_identity_is_the_identity_and_pixel_centres_map_exactly() -> None:
    np.testing.assert_allclose(theta_for(np.eye(3)[:2], (40, 60), (40, 60)), [[[1, 0, 0], [0, 1, 0]]], atol=1e-7)
    # cv2.resize's 2x downscale, x' = (x + 0.5)/2 - 0.5, keeps pixel centres at the same normalised point
    resize = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25]])
    np.testing.assert_allclose(theta_for(resize, (64, 64), 32), [[[1, 0, 0], [0, 1, 0]]], atol=1e-7)
    # a plain x/2 is off by a quarter of a source pixel: 0.25 * 2/64 in normalised units
    np.testing.assert_allclose(theta_for(np.diag([0.5, 0.5, 1.0])[:2], (64, 64), 32)[0, :, 2], [-1 / 64] * 2, atol=1e-7)
    # shifting by 5 pixels right moves the sample 5 pixels left: 10/W in normalised units
    np.testing.assert_allclose(theta_for(np.array([[1, 0, 5], [0, 1, 0]]), (50, 100), (50, 100))[0, 0, 2], -0.1, atol=1e-7)


def test_integer_shift_copies_pixels_exactly_with_black_outside() -> None:
    image = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    M = np.array([[1, 0, -30], [0, 1, 7]], dtype=np.float32)  # the crop starts at x=30 and 7 rows above the image
    got = crop_on_graph(image, M, 32)
    np.testing.assert_allclose(got, crop_image(image, M, 32), atol=1e-3)
    assert np.all(got[:7] == 0) and np.array_equal(np.round(got[7:]).astype(np.uint8), image[:25, 30:62])


def test_crop_graph_gives_the_cpu_network_input_bit_for_bit() -> None:
    """Every level 0..255 divided by 255 exactly as core.animator.to_net_input does (a Mul by float32(1/255)
    is one ulp off for some levels)."""
    image = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256  # every level, in every channel
    image = np.kron(image, np.ones((2, 2, 1), np.int64)).astype(np.uint8)  # 32x32
    M = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    (crop,) = run(crop_graph(32, 32, 32), {"image": image[None], "theta": theta_for(M, (32, 32), 32)})
    np.testing.assert_array_equal(crop, to_net_input(image))


def test_rotated_crop_matches_cv2_warp_affine_to_cv2_fixed_point(portrait: np.ndarray) -> None:
    h, w = portrait.shape[:2]
    # rotated, scaled and partly outside the photo, so borders and interpolation are both exercised
    M = similarity_o2c(np.array([w * 0.3, h * 0.35]), min(h, w) * 0.9, 0.3, 256)
    expected = crop_image(portrait, M, 256).astype(np.float32)
    error = np.abs(crop_on_graph(portrait, M) - expected)
    assert (expected == 0).mean() > 0.05  # the crop does reach outside the photo
    assert error.max() <= 2.001 and (error < 0.001).mean() > 0.9  # rounded to levels like cv2: mostly exact


def smooth_generator_output(seed: int = 0) -> np.ndarray:
    """A 1x3x512x512 'generator output' with detail and values past both ends of [0, 1]."""
    noise = np.random.default_rng(seed).random((512, 512, 3)).astype(np.float32)
    image = (cv2.GaussianBlur(noise, (0, 0), 3) - 0.5) * 8 + 0.5
    return np.clip(image, -0.2, 1.2).transpose(2, 0, 1)[None].astype(np.float32)


def test_paste_graph_matches_paste_back_and_truncates_the_crop(portrait: np.ndarray) -> None:
    h, w = portrait.shape[:2]
    M_c2o = np.linalg.inv(similarity_o2c(np.array([w * 0.5, h * 0.45]), min(h, w) * 0.8, -0.2, 512)).astype(np.float32)
    mask = prepare_paste_mask(M_c2o, portrait.shape, 512)
    generated = smooth_generator_output()
    crop_u8 = (np.clip(generated[0], 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    theta = theta_for(output_to_original(M_c2o, 512), (512, 512), (h, w))
    frame, got_crop = run(paste_graph(h, w), {"crop": generated, "image": portrait[None], "mask": mask[None], "theta": theta})
    np.testing.assert_array_equal(got_crop[0], crop_u8)
    expected = paste_back(crop_u8, M_c2o, portrait, mask, 512)
    error = np.abs(frame[0].astype(int) - expected.astype(int))
    assert (error <= 2).mean() > 0.999 and error.max() <= 3 and (error == 0).mean() > 0.9
    outside = mask[..., 0] == 0
    assert 0.2 < outside.mean() < 0.8  # both the photo and the pasted crop are in the frame
    np.testing.assert_array_equal(frame[0][outside], portrait[outside])
    assert np.abs(frame[0][~outside].astype(int) - portrait[~outside]).mean() > 20  # the crop really was pasted


def test_paste_graph_casts_by_truncation_not_rounding() -> None:
    crop = np.full((1, 3, 512, 512), 0.9999, np.float32)
    crop[0, 0], crop[0, 1] = -0.5, 1.5
    image = np.full((1, 8, 8, 3), 100, np.uint8)
    mask = np.full((1, 8, 8, 1), 0.5, np.float32)  # 0.5*255 + 0.5*100 = 177.5 -> 177; 0.5*254 + 50 = 177
    theta = theta_for(np.diag([8 / 512, 8 / 512, 1.0])[:2], (512, 512), (8, 8))
    frame, crop_u8 = run(paste_graph(8, 8), {"crop": crop, "image": image, "mask": mask, "theta": theta})
    assert crop_u8[0, 0, 0].tolist() == [0, 255, 254]
    assert frame[0, 4, 4].tolist() == [50, 177, 177]


def test_write_image_op_names_files_by_size_and_keeps_identical_files(tmp_path: Path) -> None:
    crop_path, paste_path = (write_image_op(tmp_path, kind, 72, 128) for kind in ("crop", "paste"))
    assert (crop_path.name, paste_path.name) == ("crop_72x128.onnx", "paste_72x128.onnx")
    onnx.checker.check_model(onnx.load(str(paste_path)), full_check=True)
    assert [d.dim_value for d in onnx.load(str(paste_path)).graph.output[0].type.tensor_type.shape.dim] == [1, 72, 128, 3]
    stamp = crop_path.stat().st_mtime_ns
    paste_path.write_bytes(b"stale")
    assert write_image_op(tmp_path, "crop", 72, 128) == crop_path
    assert crop_path.stat().st_mtime_ns == stamp  # identical: left alone
    assert write_image_op(tmp_path, "paste", 72, 128) == paste_path
    assert paste_path.read_bytes() == paste_graph(72, 128).SerializeToString()  # different: rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crop_72x128.onnx", "paste_72x128.onnx"]
    with pytest.raises(ValueError, match="image op must be one of \\['crop', 'paste'\\], got 'blend'"):
        write_image_op(tmp_path, "blend", 72, 128)


def test_tensorrt_rtx_parses_and_builds_both_graphs(rtx, rtx_io, onnx_io, tmp_path: Path) -> None:
    from engines.trt_build import build_plan

    for path in (write_image_op(tmp_path, kind, 720, 1280) for kind in ("crop", "paste")):
        io = rtx_io(path)
        assert io == onnx_io(path) and io["image"] == ("UINT8", (1, 720, 1280, 3)) and io["theta"][0] == "FLOAT"
    for path in (write_image_op(tmp_path, kind, 36, 64) for kind in ("crop", "paste")):
        build_plan(rtx, path, "fp32", progress=False)  # TrtBuildError when TensorRT cannot build it
