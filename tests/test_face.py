"""Face detection decode + NMS against hand values, the landmark models' geometry, the ratios, and the stand-ins."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
import pytest

from engines import open_runner
from engines.base import ModelLoadError, Runner, TensorSpec
from export.face_standins import DET_OUTPUTS, LANDMARK203_OUTPUTS, crop_face_203, write_face_models
from engines.layout import FACE_MODELS, FACE_ONNX
from core.face import (
    FaceDetector,
    FaceModels,
    Landmark106,
    Landmark203,
    decode_detections,
    detector_blob,
    eye_ratio,
    letterbox,
    lip_ratio,
    nms,
)
from core.images import ImageInputError

F32 = np.dtype(np.float32)


class FakeRunner(Runner):
    """Returns chosen arrays and records what it was fed."""

    def __init__(self, inputs: dict[str, tuple], outputs: dict[str, np.ndarray]) -> None:
        super().__init__(Path("fake.onnx"))
        self.inputs = [TensorSpec(n, s, F32) for n, s in inputs.items()]
        self.outputs = [TensorSpec(n, a.shape, F32) for n, a in outputs.items()]
        self.values = outputs
        self.fed: list[dict[str, np.ndarray]] = []

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_feeds(feeds)
        self.fed.append(dict(feeds))
        return dict(self.values)


def _raw_outputs(picks: list[tuple[int, int, int, int, float, tuple, tuple]]) -> list[np.ndarray]:
    """Zero SCRFD outputs for a 512 input, with (stride, row, col, anchor, score, distances, kps offset) set."""
    outs = []
    for width in (1, 4, 10):
        for stride in (8, 16, 32):
            outs.append(np.zeros(((512 // stride) ** 2 * 2, width), np.float32))
    for stride, row, col, anchor, score, dist, kp in picks:
        s = (8, 16, 32).index(stride)
        i = (row * (512 // stride) + col) * 2 + anchor
        outs[s][i, 0], outs[3 + s][i] = score, dist
        outs[6 + s][i] = np.tile(kp, 5)
    return outs


PICKS = [
    (32, 4, 5, 0, 0.9, (1, 1, 2, 2), (0.5, -0.5)),  # centre (160, 128): box 128, 96, 224, 192
    (32, 4, 6, 1, 0.8, (1, 1, 2, 2), (0, 0)),  # box 160, 96, 256, 192: IoU 0.504 with the first -> dropped
    (8, 10, 20, 1, 0.5, (2, 2, 2, 2), (0, 0)),  # centre (160, 80): box 144, 64, 176, 96, barely touches
    (16, 3, 3, 0, 0.14, (1, 1, 1, 1), (0, 0)),  # under the 0.15 threshold
]


def test_decode_and_nms_by_hand() -> None:
    dets, kps = decode_detections(_raw_outputs(PICKS), 512, det_scale=0.5, threshold=0.15)
    np.testing.assert_allclose(dets, [[256, 192, 448, 384, 0.9], [288, 128, 352, 192, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(kps[0], np.tile([352.0, 224.0], (5, 1)))
    np.testing.assert_allclose(kps[1], np.tile([320.0, 160.0], (5, 1)))
    dets, _ = decode_detections(_raw_outputs(PICKS), 512, det_scale=1.0, threshold=0.1)
    assert dets[:, 4].tolist() == pytest.approx([0.9, 0.5, 0.14])


def test_nms_uses_the_plus_one_convention() -> None:
    # inter 5x10 = 50 over 150: 0.333 -> kept; shifted one pixel: 60 / 140 = 0.43 -> dropped
    assert nms(np.array([[0, 0, 9, 9, 0.9], [5, 0, 14, 9, 0.8]], np.float32)) == [0, 1]
    # without the +1 this pair would be 45 / 117 = 0.385 and survive
    assert nms(np.array([[0, 0, 9, 9, 0.8], [4, 0, 13, 9, 0.9]], np.float32)) == [1]


def test_detector_letterbox_blob_and_largest_first() -> None:
    picks = [
        (32, 4, 5, 0, 0.9, (1, 1, 1, 1), (0, 0)),  # small, best score
        (32, 12, 12, 0, 0.6, (3, 3, 3, 3), (0, 0)),  # large, worse score
    ]
    runner = FakeRunner({"input.1": (1, 3, None, None)}, dict(zip(DET_OUTPUTS, _raw_outputs(picks))))
    img = np.zeros((100, 200, 3), np.uint8)
    img[..., 0] = 255
    faces = FaceDetector(runner)(img)
    assert [f.score for f in faces] == pytest.approx([0.6, 0.9])
    np.testing.assert_allclose(faces[0].bbox, np.array([288, 288, 480, 480]) / 2.56, rtol=1e-6)
    blob = runner.fed[0]["input.1"]
    assert blob.shape == (1, 3, 512, 512) and blob.dtype == np.float32
    assert blob[0, :, 0, 0].tolist() == [127.5 / 128, -127.5 / 128, -127.5 / 128]  # RGB order
    assert blob[0, 0, 256, 0] == -127.5 / 128  # letterbox padding below the 256 image rows


def test_letterbox_keeps_aspect_at_top_left() -> None:
    canvas, scale = letterbox(np.full((300, 150, 3), 9, np.uint8))
    assert scale == pytest.approx(512 / 300)
    assert canvas[:, :256].min() == 9 and canvas[:, 256:].max() == 0


def test_landmark106_maps_crop_corners_back() -> None:
    pred = np.zeros((1, 212), np.float32)
    pred[0, 0:2] = -1  # point 0 at the crop's top-left corner, the rest at its centre
    runner = FakeRunner({"data": (1, 3, 192, 192)}, {"fc1": pred})
    img = np.full((200, 400, 3), 200, np.uint8)
    pts = Landmark106(runner)(img, np.array([100, 50, 300, 150], np.float32))
    assert pts.shape == (106, 2)
    np.testing.assert_allclose(pts[0], [200 - 150, 100 - 150], atol=1e-4)  # 192 px = 1.5 * 200
    np.testing.assert_allclose(pts[1:], np.tile([200.0, 100.0], (105, 1)), atol=1e-4)
    assert runner.fed[0]["data"][0, :, 96, 96].tolist() == [200.0, 200.0, 200.0]  # raw pixels, no normalising


def test_landmark203_uses_output_2_and_its_crop() -> None:
    out = {name: np.zeros((1, w), np.float32) for name, w in zip(LANDMARK203_OUTPUTS, (1, 203, 406))}
    out["landmarks"] = np.full((1, 406), 0.5, np.float32)
    runner = FakeRunner({"input": (1, 3, 224, 224)}, out)
    init = crop_face_203() * 224 + (50, 30)  # already at its crop's fixed point, shifted by (50, 30)
    img = np.full((400, 400, 3), 51, np.uint8)
    pts = Landmark203(runner)(img, init)
    np.testing.assert_allclose(pts, np.tile([112 + 50, 112 + 30], (203, 1)), atol=1e-3)
    assert runner.fed[0]["input"].max() == pytest.approx(0.2)  # 51 / 255


def test_ratios_by_hand() -> None:
    lmk = np.zeros((203, 2))
    lmk[[0, 12, 6, 18]] = [(0, 0), (10, 0), (5, -1), (5, 2)]
    lmk[[24, 36, 30, 42]] = [(20, 0), (28, 0), (24, -2), (24, 2)]
    lmk[[48, 66, 90, 102]] = [(0, 10), (20, 10), (10, 9), (10, 12)]
    np.testing.assert_allclose(eye_ratio(lmk), [0.3, 0.5], rtol=1e-6)
    np.testing.assert_allclose(lip_ratio(lmk), [0.15], rtol=1e-6)
    assert eye_ratio(lmk).shape == (2,) and lip_ratio(lmk).shape == (1,)


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding only the three face stand-ins."""
    weights = tmp_path_factory.mktemp("face_weights")
    paths = write_face_models(weights, seed=0)
    assert [p.relative_to(weights).as_posix() for p in paths] == list(FACE_MODELS.values())
    models = tmp_path_factory.mktemp("face_models")
    for path in paths:
        shutil.copy(path, models / path.name)
    return models


def test_standin_signatures(standin_dir: Path) -> None:
    with open_runner(standin_dir / FACE_ONNX["det_10g"]) as det:
        assert [(s.name, s.shape) for s in det.inputs] == [("input.1", (1, 3, None, None))]
        assert [s.name for s in det.outputs] == list(DET_OUTPUTS)
        out = det.infer({"input.1": np.zeros((1, 3, 320, 640), np.float32)})
        assert [out[n].shape for n in DET_OUTPUTS] == [(6400, 1), (1600, 1), (400, 1), (6400, 4), (1600, 4),
                                                       (400, 4), (6400, 10), (1600, 10), (400, 10)]
        assert min(out[n].min() for n in DET_OUTPUTS[3:6]) >= 0
    with open_runner(standin_dir / FACE_ONNX["2d106det"]) as lmk:
        assert [(s.name, s.shape) for s in lmk.inputs] == [("data", (1, 3, 192, 192))]
        pred = lmk.infer({"data": np.full((1, 3, 192, 192), 255, np.float32)})["fc1"]
        assert pred.shape == (1, 212) and -1 <= pred.min() and pred.max() <= 1
    with open_runner(standin_dir / FACE_ONNX["landmark"]) as lmk:
        assert [(s.name, s.shape) for s in lmk.inputs] == [("input", (1, 3, 224, 224))]
        assert [s.shape for s in lmk.outputs][2] == (1, 406)
        pred = lmk.infer({"input": np.zeros((1, 3, 224, 224), np.float32)})["landmarks"]
        assert 0 <= pred.min() and pred.max() <= 1


def test_standins_differ_by_seed(tmp_path: Path) -> None:
    a = write_face_models(tmp_path / "a", seed=0)
    b = write_face_models(tmp_path / "b", seed=1)
    assert all(pa.read_bytes() != pb.read_bytes() for pa, pb in zip(a, b))
    assert [pa.read_bytes() for pa in a] == [p.read_bytes() for p in write_face_models(tmp_path / "c", seed=0)]


def test_blank_image_has_no_face(standin_dir: Path) -> None:
    with FaceModels(standin_dir) as models:
        for value in (0, 128, 255):
            assert models.detector(np.full((480, 640, 3), value, np.uint8)) == []
            assert models.analyze(np.full((480, 640, 3), value, np.uint8)) is None
        canvas, _ = letterbox(np.full((480, 640, 3), 128, np.uint8))
        scores = models.detector.runner.infer({"input.1": detector_blob(canvas)})
        assert max(scores[n].max() for n in DET_OUTPUTS[:3]) < 0.1


@pytest.mark.parametrize("name", ["s0.jpg", "s6.jpg", "s12.jpg"])
def test_portrait_gives_a_face_and_landmarks(standin_dir: Path, load_portrait, name: str) -> None:
    img = load_portrait(name)
    with FaceModels(standin_dir) as models:
        result = models.analyze(img)
        assert result is not None and result.score >= 0.15
        side = result.bbox[2] - result.bbox[0]
        assert 0.1 * max(img.shape) < side < max(img.shape)
        assert result.lmk106.shape == (106, 2) and result.lmk203.shape == (203, 2)
        assert 0.15 < eye_ratio(result.lmk203)[0] < 0.45 and 0 <= lip_ratio(result.lmk203)[0] < 0.2
        again = models.analyze(img)
        assert np.array_equal(again.bbox, result.bbox) and np.array_equal(again.lmk203, result.lmk203)
        tracked = models.track(img, result.lmk203)
        np.testing.assert_allclose(tracked, result.lmk203, atol=0.01)  # same frame: tracking stands still


def test_ratios_follow_the_image(standin_dir: Path) -> None:
    init = crop_face_203() * 224 + (100, 100)
    with FaceModels(standin_dir) as models:
        dark = models.track(np.full((400, 400, 3), 20, np.uint8), init)
        bright = models.track(np.full((400, 400, 3), 235, np.uint8), init)
    assert eye_ratio(bright)[0] > eye_ratio(dark)[0] + 0.05
    assert lip_ratio(bright)[0] > lip_ratio(dark)[0] + 0.05


def test_face_models_reject_non_rgb_and_missing_folder(standin_dir: Path, tmp_path: Path) -> None:
    with FaceModels(standin_dir) as models:
        with pytest.raises(ImageInputError) as err:
            models.analyze(np.zeros((64, 64), np.uint8))
    assert str(err.value) == (
        "face models need an HxWx3 RGB uint8 image, got uint8 (64, 64); convert it with core.images.to_rgb_uint8"
    )
    with pytest.raises(ModelLoadError, match="det_10g.onnx is missing"):
        FaceModels(tmp_path)
