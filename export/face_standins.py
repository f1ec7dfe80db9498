"""Small stand-ins for the three face models, for tests and demos without the real weights.

Each file has the real model's input/output names, shapes, order and value ranges, and behaves just enough
like a face model for the pipeline to do real work on real photos:
- det_10g: scores come from image detail (mean |x - blur(x)|) pooled over 96 px windows at stride 32, so a
  flat or blank frame finds nothing and a photo finds a face-sized box where its detail peaks (on real
  portraits that is often, not always, the face); strides 8 and 16 never fire.
- 2d106det / landmark: a fixed synthetic mean face, plus an eyelid and inner-lip opening that follows the
  crop's mean brightness, so the eye/lip ratios are image-dependent. Only interior points move, which keeps
  the landmark bounding box (and so the 203-point tracking crop) a fixed point: tracking never drifts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.layout import FACE_MODELS

OPSET = 17
STRIDES = (8, 16, 32)
#: insightface output names of det_10g, in graph order: scores, bbox, kps for strides 8, 16, 32
DET_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
#: landmark.onnx output names (the real names are not documented; our code only uses output index 2)
LANDMARK203_OUTPUTS = ("aux_0", "aux_1", "landmarks")

# detector calibration: detail level where the stride-32 score crosses 0.5, and the slope around it
DETAIL_THRESHOLD = 0.02
DETAIL_SLOPE = 300.0
#: stride-32 box distances (left, top, right, bottom) in stride units, the same for both anchors, so that
#: "largest face first" does not prefer the weaker anchor (it scores a little lower instead)
BOX_DISTANCES = (2.5, 2.4, 2.5, 3.0)
#: five keypoints (eyes, nose, mouth corners) relative to the anchor centre, in stride units
KPS_OFFSETS = ((-0.8, -0.5), (0.8, -0.5), (0.0, 0.3), (-0.65, 1.1), (0.65, 1.1))


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int, start: float = np.pi) -> np.ndarray:
    """n points around an ellipse, starting at angle `start` (pi = the left end), clockwise on screen."""
    phi = start + 2 * np.pi * np.arange(n) / n
    return np.stack([cx + rx * np.cos(phi), cy + ry * np.sin(phi)], axis=1)


def _arc(cx: float, cy: float, rx: float, ry: float, n: int, a0: float, a1: float) -> np.ndarray:
    phi = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(phi), cy + ry * np.sin(phi)], axis=1)


def _mirror(pts: np.ndarray) -> np.ndarray:
    return pts * np.array([-1.0, 1.0])


def _contour(n: int) -> np.ndarray:
    """Jaw line from the left temple over the chin to the right temple."""
    return _arc(0.0, -0.1, 0.55, 0.65, n, np.pi, 0.0)


def _brow() -> np.ndarray:
    """Nine points of the image-left eyebrow (the topmost points of the face)."""
    return _arc(-0.26, -0.26, 0.17, 0.08, 9, np.pi, 2 * np.pi)


def mean_face_106() -> np.ndarray:
    """The synthetic 106-point face in face units (eye line y=-0.15, mouth y=0.3, chin y=0.55).

    Index groups follow the insightface 2d106 markup as the crop uses it: contour 0-32, left eye 33-42,
    left brow 43-51, mouth 52-71 (corners 52 and 61), nose 72-86, right eye 87-96, right brow 97-105.
    """
    eye = _ellipse(-0.25, -0.15, 0.1, 0.035, 10, start=0.0)
    upper = _arc(0.0, 0.3, 0.2, 0.06, 10, np.pi, 2 * np.pi)  # 52 (left corner) ... 61 (right corner)
    lower = _arc(0.0, 0.3, 0.2, 0.07, 12, 0.0, np.pi)[1:-1]
    nose = np.concatenate([_arc(0.0, -0.12, 0.0, 0.24, 7, 0, np.pi / 2), _arc(0.0, 0.14, 0.09, 0.03, 8, np.pi, 0)])
    return np.concatenate(
        [_contour(33), eye, _brow(), upper, lower, nose, _mirror(eye), _mirror(_brow())]
    ).astype(np.float32)


def mean_face_203() -> np.ndarray:
    """The synthetic 203-point face in face units.

    Left eye 0-23 (corners 0 and 12, lids 6 and 18), right eye 24-47 (mirror), outer lip 48-83 (corners 48
    and 66), inner lip 84-107 (lids 90 and 102), contour 108-140, brows 141-158, nose 159-202. Eye ratio 0.25,
    lip ratio ~0.023 (closed mouth) before the image-dependent opening (up to +0.1 and +0.14 for a white crop).
    """
    eye = _ellipse(-0.25, -0.15, 0.1, 0.025, 24)
    outer = _ellipse(0.0, 0.3, 0.22, 0.075, 36)
    inner = _ellipse(0.0, 0.3, 0.16, 0.005, 24)
    nose = np.concatenate([_arc(0.0, -0.12, 0.0, 0.24, 20, 0, np.pi / 2), _arc(0.0, 0.14, 0.09, 0.03, 24, np.pi, 0)])
    return np.concatenate(
        [eye, _mirror(eye), outer, inner, _contour(33), _brow(), _mirror(_brow()), nose]
    ).astype(np.float32)


def _fit_box(pts: np.ndarray, centre: tuple[float, float], extent: float) -> np.ndarray:
    """Scale and shift points so their bounding box has the given centre and longer side."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return ((pts - (lo + hi) / 2) * (extent / (hi - lo).max()) + np.array(centre)).astype(np.float32)


def crop_face_106() -> np.ndarray:
    """The 106 face as 2d106det outputs it: [-1, 1] crop units; the detector box (2/3 of the crop) holds it."""
    return _fit_box(mean_face_106(), (0.0, 0.05), 1.2)


def crop_face_203() -> np.ndarray:
    """The 203 face as landmark.onnx outputs it: [0, 1] crop units, placed at the fixed point of its own
    tracking crop (scale 1.5, vy -0.1: box side 2/3, box centre 0.1 below the crop centre)."""
    return _fit_box(mean_face_203(), (0.5, 0.6), 2 / 3)


def _opening(pts: np.ndarray, index_pairs: list[tuple[int, int]], amount: float) -> np.ndarray:
    """Per-coordinate weights that move each (upper, lower) pair apart vertically by `amount` per unit."""
    w = np.zeros_like(pts)
    for upper, lower in index_pairs:
        w[upper, 1] -= amount
        w[lower, 1] += amount
    return w.reshape(-1)


def _landmark_model(
    name: str,
    input_name: str,
    side: int,
    input_scale: float,
    outputs: list[tuple[str, int]],
    mean: np.ndarray,
    weight: np.ndarray,
    value_range: tuple[float, float],
) -> onnx.ModelProto:
    """Graph: brightness = mean(input) * input_scale in [0, 1] -> last output = clip(mean + brightness * weight);
    the other outputs are zeros of the given widths (they exist only to keep the real output order)."""
    mean_flat = mean.reshape(1, -1).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array([input_scale], np.float32), "in_scale"),
        numpy_helper.from_array(weight.reshape(1, -1).astype(np.float32), "w"),
        numpy_helper.from_array(mean_flat, "mean"),
        numpy_helper.from_array(np.array(value_range[0], np.float32), "lo"),
        numpy_helper.from_array(np.array(value_range[1], np.float32), "hi"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["avg"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["avg", "in_scale"], ["bright"]),
        helper.make_node("Unsqueeze", ["bright", "ax1"], ["bright2"]),
        helper.make_node("Mul", ["bright2", "w"], ["delta"]),
        helper.make_node("Add", ["mean", "delta"], ["raw"]),
        helper.make_node("Clip", ["raw", "lo", "hi"], [outputs[-1][0]]),
    ]
    for out_name, width in outputs[:-1]:
        inits.append(numpy_helper.from_array(np.zeros((1, width), np.float32), f"{out_name}_zero"))
        nodes.append(helper.make_node("Mul", [f"{out_name}_zero", "bright2"], [out_name]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, w]) for n, w in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="face_standins")


def landmark106_model(rng: np.random.Generator) -> onnx.ModelProto:
    """2d106det stand-in: input "data" 1x3x192x192 raw 0..255, output "fc1" 1x212 in [-1, 1]."""
    pts = crop_face_106()
    pairs = [(base + 10 - k, base + k) for base in (33, 87) for k in range(1, 5)]  # (upper lid, lower lid)
    weight = _opening(pts, pairs, 0.02 * (1 + 0.1 * rng.standard_normal()))
    return _landmark_model("landmark106_standin", "data", 192, 1 / 255, [("fc1", 212)], pts, weight, (-1.0, 1.0))


def landmark203_model(rng: np.random.Generator) -> onnx.ModelProto:
    """landmark.onnx stand-in: input "input" 1x3x224x224 in [0, 1], output index 2 is 1x406 in [0, 1]."""
    pts = crop_face_203()
    lids = [(k, 24 - k) for k in range(1, 12)] + [(24 + k, 48 - k) for k in range(1, 12)]
    lips = [(84 + k, 84 + 24 - k) for k in range(1, 12)]
    weight = _opening(pts, lids, 0.01 * (1 + 0.1 * rng.standard_normal())) + _opening(pts, lips, 0.03)
    outputs = [(LANDMARK203_OUTPUTS[0], 1), (LANDMARK203_OUTPUTS[1], 203), (LANDMARK203_OUTPUTS[2], 406)]
    return _landmark_model("landmark203_standin", "input", 224, 1.0, outputs, pts, weight, (0.0, 1.0))


def _conv1x1(name: str, x: str, out: str, weight: np.ndarray, bias: np.ndarray) -> tuple[list, list]:
    inits = [
        numpy_helper.from_array(weight.reshape(-1, 1, 1, 1).astype(np.float32), f"{name}_w"),
        numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"),
    ]
    return [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out])], inits


def _flatten_anchors(x: str, out: str, width: int) -> list:
    """[1, 2*width, h, w] -> [h*w*2, width]: anchor-major per location, as insightface lays its outputs out."""
    return [
        helper.make_node("Transpose", [x], [f"{x}_t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", [f"{x}_t", f"shape{width}"], [out]),
    ]


def detector_model(rng: np.random.Generator) -> onnx.ModelProto:
    """det_10g stand-in: input "input.1" 1x3xHxW blob, nine outputs (scores, boxes, kps per stride)."""
    jitter = 1 + 0.02 * rng.standard_normal(2)
    inits = [numpy_helper.from_array(np.array([-1, w], np.int64), f"shape{w}") for w in (1, 4, 10)]
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["grey"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["grey"], ["blur"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=0),
        helper.make_node("Sub", ["grey", "blur"], ["hp"]),
        helper.make_node("Abs", ["hp"], ["detail"]),
    ]
    outputs: dict[str, str] = {}
    for i, stride in enumerate(STRIDES):
        cells = f"cells{stride}"
        nodes.append(helper.make_node("AveragePool", ["detail"], [cells], kernel_shape=[stride, stride],
                                      strides=[stride, stride]))
        if stride == 32:
            nodes.append(helper.make_node("AveragePool", [cells], ["window"], kernel_shape=[3, 3],
                                          pads=[1, 1, 1, 1], count_include_pad=0))
            slope = DETAIL_SLOPE * jitter
            n, ini = _conv1x1("score32", "window", "logit32", slope, -slope * DETAIL_THRESHOLD - [0.0, 0.3])
        else:  # these strides never fire: a constant logit of -6 (score 0.0025) whatever the image
            n, ini = _conv1x1(f"score{stride}", cells, f"logit{stride}", np.zeros(2), np.full(2, -6.0))
        nodes += n
        inits += ini
        nodes.append(helper.make_node("Sigmoid", [f"logit{stride}"], [f"prob{stride}"]))
        box = np.tile(np.array(BOX_DISTANCES if stride == 32 else [1.0] * 4, np.float32), 2)
        n, ini = _conv1x1(f"box{stride}", cells, f"dist{stride}", np.zeros_like(box), box)
        nodes += n
        inits += ini
        kps = np.tile(np.array(KPS_OFFSETS, np.float32).reshape(-1), 2)
        n, ini = _conv1x1(f"kps{stride}", cells, f"kp{stride}", np.zeros_like(kps), kps)
        nodes += n
        inits += ini
        nodes += _flatten_anchors(f"prob{stride}", DET_OUTPUTS[i], 1)
        nodes += _flatten_anchors(f"dist{stride}", DET_OUTPUTS[3 + i], 4)
        nodes += _flatten_anchors(f"kp{stride}", DET_OUTPUTS[6 + i], 10)
        outputs.update({DET_OUTPUTS[i]: 1, DET_OUTPUTS[3 + i]: 4, DET_OUTPUTS[6 + i]: 10})
    graph = helper.make_graph(
        nodes,
        "det_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, outputs[name]]) for name in DET_OUTPUTS],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="face_standins")


def write_face_models(weights_dir: Path, seed: int = 0) -> list[Path]:
    """Write the three stand-ins at their release paths under weights_dir; the seed jitters a few weights."""
    rng = np.random.default_rng(seed)
    models = {
        "det_10g": detector_model(rng),
        "2d106det": landmark106_model(rng),
        "landmark": landmark203_model(rng),
    }
    paths = []
    for name, model in models.items():
        onnx.checker.check_model(model)
        path = Path(weights_dir) / FACE_MODELS[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        paths.append(path)
    return paths
