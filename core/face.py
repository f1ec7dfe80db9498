"""Face detection (SCRFD det_10g), 106- and 203-point landmarks, and the eye/lip ratios (spec 3.2-3.4, 7.2).

Every function takes RGB uint8 images. The official pipeline hands BGR to insightface, which swaps it back to
RGB in its blobs, so the networks see RGB either way: we build the same RGB blobs without the round trip
(resizing and warping act per channel, so the order of the swap does not change a single value).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines import Runner, open_runners
from engines.layout import FACE_INPUT_SHAPES, FACE_ONNX
from core.crop import crop_image, crop_transform, transform_pts
from core.images import ImageInputError

#: detector input side: the frame is letterboxed into this square (det_size of the official FaceAnalysisDIY)
DET_SIZE = FACE_INPUT_SHAPES["det_10g"][-1]
#: score threshold: the CLI's 0.15 (spec 3.2), which is what `python inference.py` runs with; CropConfig's 0.1
#: is never reached from the CLI, and the slightly higher value also rejects more half-faces in a webcam feed
DET_THRESHOLD = 0.15
NMS_IOU = 0.4
STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
#: eps added to the ratio denominators (spec 7.2)
RATIO_EPS = 1e-6


@dataclass
class Face:
    """One detection, in original-image pixels: bbox (x1, y1, x2, y2), score, and five keypoints (5x2)."""

    bbox: np.ndarray
    score: float
    kps: np.ndarray

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


@dataclass
class FaceResult:
    """The largest face of an image with its 106 and 203 landmarks (original-image pixels)."""

    bbox: np.ndarray
    score: float
    lmk106: np.ndarray
    lmk203: np.ndarray


def _check_rgb(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        raise ImageInputError(
            f"face models need an HxWx3 RGB uint8 image, got {getattr(img, 'dtype', type(img).__name__)} {shape}; "
            "convert it with core.images.to_rgb_uint8"
        )


def letterbox(img: np.ndarray, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """Fit the image into a black size x size canvas at the top-left, aspect kept; returns (canvas, det_scale)."""
    h, w = img.shape[:2]
    if h / w > 1.0:
        new_h, new_w = size, int(size / (h / w))
    else:
        new_w, new_h = size, int(size * (h / w))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h))
    return canvas, new_h / h


def detector_blob(canvas_rgb: np.ndarray) -> np.ndarray:
    """(pixel - 127.5) / 128 as a float32 1x3xHxW RGB blob."""
    return ((canvas_rgb.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]


@functools.lru_cache(maxsize=16)
def anchor_centres(height: int, width: int, stride: int, per_cell: int = ANCHORS_PER_CELL) -> np.ndarray:
    """(height*width*per_cell, 2) anchor centres (col*stride, row*stride), row-major, each repeated per anchor.
    Cached (the detector runs on every live frame at one size) and read-only, so no caller can change the cache."""
    rows, cols = np.mgrid[:height, :width]
    centres = (np.stack([cols, rows], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    centres = np.repeat(centres, per_cell, axis=0)
    centres.setflags(write=False)
    return centres


def distance2bbox(centres: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Boxes (x1, y1, x2, y2) from centre distances (left, top, right, bottom) in pixels."""
    return np.concatenate([centres - dist[:, 0:2], centres + dist[:, 2:4]], axis=1)


def distance2kps(centres: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """(N, 5, 2) keypoints from centre offsets (dx, dy) x 5 in pixels."""
    return centres[:, None, :] + dist.reshape(len(dist), -1, 2)


def nms(dets: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Greedy NMS on (N, 5) [x1, y1, x2, y2, score], areas with the +1 pixel convention; kept indices."""
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return keep


def decode_detections(
    outputs: list[np.ndarray], input_size: int, det_scale: float, threshold: float = DET_THRESHOLD,
    iou: float = NMS_IOU,
) -> tuple[np.ndarray, np.ndarray]:
    """SCRFD outputs (scores x3, boxes x3, kps x3 for strides 8/16/32) -> (dets (M, 5), kps (M, 5, 2)) in
    original pixels, highest score first, after thresholding and NMS."""
    n = len(STRIDES)
    scores, boxes, kpss = [], [], []
    for i, stride in enumerate(STRIDES):
        side = input_size // stride
        centres = anchor_centres(side, side, stride)
        score = outputs[i].reshape(-1)
        keep = score >= threshold
        scores.append(score[keep])
        boxes.append(distance2bbox(centres, outputs[n + i] * stride)[keep])
        kpss.append(distance2kps(centres, outputs[2 * n + i] * stride)[keep])
    score = np.concatenate(scores)
    order = score.argsort()[::-1]
    dets = np.hstack([np.concatenate(boxes) / det_scale, score[:, None]]).astype(np.float32)[order]
    kps = (np.concatenate(kpss) / det_scale)[order]
    keep = nms(dets, iou)
    return dets[keep], kps[keep]


class FaceDetector:
    """det_10g: every face of a frame, largest area first (the official "large-small" order)."""

    def __init__(self, runner: Runner, threshold: float = DET_THRESHOLD, input_size: int = DET_SIZE) -> None:
        self.runner = runner
        self.threshold = threshold
        self.input_size = input_size
        self.input_name = runner.inputs[0].name
        self.output_names = [spec.name for spec in runner.outputs]
        if len(self.output_names) != 3 * len(STRIDES):
            raise ValueError(
                f"{runner.path.name} has {len(self.output_names)} outputs; a SCRFD detector (det_10g.onnx) has 9"
            )

    def __call__(self, img_rgb: np.ndarray) -> list[Face]:
        _check_rgb(img_rgb)
        canvas, det_scale = letterbox(img_rgb, self.input_size)
        out = self.runner.infer({self.input_name: detector_blob(canvas)})
        dets, kps = decode_detections([out[name] for name in self.output_names], self.input_size, det_scale,
                                      self.threshold)
        faces = [Face(d[:4], float(d[4]), k.astype(np.float32)) for d, k in zip(dets, kps)]
        return sorted(faces, key=lambda face: face.area, reverse=True)  # stable: ties keep score order


class Landmark106:
    """2d106det: 106 points from a detection box (spec 3.3)."""

    SIZE = FACE_INPUT_SHAPES["2d106det"][-1]

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.input_name = runner.inputs[0].name
        self.output_name = runner.outputs[0].name

    def crop_matrix(self, bbox: np.ndarray) -> np.ndarray:
        """2x3 original->crop matrix: box centre to the crop centre, box side x1.5 to the crop side."""
        x1, y1, x2, y2 = (float(v) for v in bbox[:4])
        s = self.SIZE / (max(x2 - x1, y2 - y1) * 1.5)
        half = self.SIZE / 2
        return np.array([[s, 0.0, half - s * (x1 + x2) / 2], [0.0, s, half - s * (y1 + y2) / 2]])

    def __call__(self, img_rgb: np.ndarray, bbox: np.ndarray) -> np.ndarray:
        _check_rgb(img_rgb)
        M = self.crop_matrix(bbox)
        crop = cv2.warpAffine(img_rgb, M, (self.SIZE, self.SIZE), borderValue=0.0)
        blob = crop.astype(np.float32).transpose(2, 0, 1)[None]
        pred = self.runner.infer({self.input_name: blob})[self.output_name].reshape(-1, 2)
        pts = (pred + 1) * (self.SIZE // 2)
        return transform_pts(pts, cv2.invertAffineTransform(M)).astype(np.float32)


class Landmark203:
    """landmark.onnx: 203 points, cropped from an existing landmark set (spec 3.4)."""

    SIZE = FACE_INPUT_SHAPES["landmark"][-1]
    SCALE = 1.5
    VY_RATIO = -0.1

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.input_name = runner.inputs[0].name
        if len(runner.outputs) < 3:
            raise ValueError(
                f"{runner.path.name} has {len(runner.outputs)} outputs; LivePortrait's landmark.onnx has 3"
            )
        self.output_name = runner.outputs[2].name

    def __call__(self, img_rgb: np.ndarray, init_pts: np.ndarray) -> np.ndarray:
        _check_rgb(img_rgb)
        M_o2c, M_c2o = crop_transform(init_pts, self.SIZE, self.SCALE, 0.0, self.VY_RATIO, rotate=True)
        crop = crop_image(img_rgb, M_o2c, self.SIZE)
        blob = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        pred = self.runner.infer({self.input_name: blob})[self.output_name].reshape(-1, 2) * self.SIZE
        return transform_pts(pred, M_c2o).astype(np.float32)


def _distance_ratio(lmk: np.ndarray, a: int, b: int, c: int, d: int) -> float:
    return float(np.linalg.norm(lmk[a] - lmk[b]) / (np.linalg.norm(lmk[c] - lmk[d]) + RATIO_EPS))


def eye_ratio(lmk203: np.ndarray) -> np.ndarray:
    """(left, right) eye opening: lid distance over corner distance (spec 7.2)."""
    return np.array([_distance_ratio(lmk203, 6, 18, 0, 12), _distance_ratio(lmk203, 30, 42, 24, 36)],
                    dtype=np.float32)


def lip_ratio(lmk203: np.ndarray) -> np.ndarray:
    """(1,) mouth opening: inner-lip distance over mouth-corner distance (spec 7.2)."""
    return np.array([_distance_ratio(lmk203, 90, 102, 48, 66)], dtype=np.float32)


class FaceModels:
    """The three face models of a models folder, opened once with one backend."""

    def __init__(self, models_dir: Path, backend: str = "cpu", det_threshold: float = DET_THRESHOLD) -> None:
        names = ("det_10g", "2d106det", "landmark")
        runners = list(open_runners({name: Path(models_dir) / FACE_ONNX[name] for name in names}, backend).values())
        self.runners = runners
        self.detector = FaceDetector(runners[0], det_threshold)
        self.landmark106 = Landmark106(runners[1])
        self.landmark203 = Landmark203(runners[2])

    def analyze(self, img_rgb: np.ndarray) -> FaceResult | None:
        """Detect, keep the largest face, and run both landmark models on it; None when there is no face."""
        faces = self.detector(img_rgb)
        return self.describe(img_rgb, faces[0]) if faces else None

    def describe(self, img_rgb: np.ndarray, face: Face) -> FaceResult:
        """Both landmark sets of an already detected face."""
        lmk106 = self.landmark106(img_rgb, face.bbox)
        return FaceResult(face.bbox, face.score, lmk106, self.landmark203(img_rgb, lmk106))

    def track(self, img_rgb: np.ndarray, prev_lmk203: np.ndarray) -> np.ndarray:
        """Next frame's 203 points from the previous frame's, without detection (the official video tracking)."""
        return self.landmark203(img_rgb, prev_lmk203)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()

    def __enter__(self) -> "FaceModels":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
