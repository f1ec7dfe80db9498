"""Small ONNX graphs the engine tests build and run: the warping module and generator in miniature (test_trt_build,
test_trt_runner), a one-op model (test_backend_select, test_bench_gpu) and one convolution (test_winograd,
test_fft_conv)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def warp_like(seed: int = 0) -> onnx.ModelProto:
    """The warping module and generator in miniature (opset 20): a 5-D GridSample whose grid is an identity grid
    moved by keypoints and scaled by a conv mask, then a 2-D conv, a nearest 2x Resize and a sigmoid."""
    rng = np.random.default_rng(seed)
    d, h, w = 4, 8, 8
    z, y, x = np.meshgrid(np.linspace(-1, 1, d), np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    inits = [
        numpy_helper.from_array(np.stack([x, y, z], -1)[None].astype(np.float32), "identity_grid"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3, 3)).astype(np.float32), "w_feat"),
        numpy_helper.from_array(rng.normal(0, 0.3, (1, 4, 3, 3, 3)).astype(np.float32), "w_mask"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 16, 3, 3)).astype(np.float32), "w_out"),
        numpy_helper.from_array(np.array([1], np.int64), "kp_axis"),
        numpy_helper.from_array(np.array([1, 1, 1, 1, 3], np.int64), "offset_shape"),
        numpy_helper.from_array(np.array([1, 16, h, w], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["feature", "w_feat"], ["feat"], pads=[1] * 6),
        helper.make_node("ReduceMean", ["kp", "kp_axis"], ["kp_mean"], keepdims=1),
        helper.make_node("Reshape", ["kp_mean", "offset_shape"], ["offset"]),
        helper.make_node("Add", ["identity_grid", "offset"], ["moved"]),
        helper.make_node("Conv", ["feat", "w_mask"], ["mask_logit"], pads=[1] * 6),
        helper.make_node("Sigmoid", ["mask_logit"], ["mask"]),
        helper.make_node("Transpose", ["mask"], ["mask_last"], perm=[0, 2, 3, 4, 1]),
        helper.make_node("Mul", ["moved", "mask_last"], ["grid"]),
        helper.make_node("GridSample", ["feat", "grid"], ["sampled"], mode="linear", padding_mode="zeros", align_corners=0),
        helper.make_node("Reshape", ["sampled", "flat_shape"], ["flat"]),
        helper.make_node("Conv", ["flat", "w_out"], ["decoded"], pads=[1] * 4),
        helper.make_node("Resize", ["decoded", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Sigmoid", ["up"], ["image"]),
    ]
    graph = helper.make_graph(
        nodes,
        "warp_like",
        [
            helper.make_tensor_value_info("feature", TensorProto.FLOAT, [1, 4, d, h, w]),
            helper.make_tensor_value_info("kp", TensorProto.FLOAT, [1, 3, 3]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 2 * h, 2 * w])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    return model


def warp_feeds(seed: int = 1) -> dict[str, np.ndarray]:
    """Seeded inputs for warp_like's graph."""
    rng = np.random.default_rng(seed)
    return {
        "feature": rng.normal(size=(1, 4, 4, 8, 8)).astype(np.float32),
        "kp": rng.normal(0, 0.2, (1, 3, 3)).astype(np.float32),
    }


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write `model` to `path` and give the path back, so a test sets up its ONNX file in one line."""
    onnx.save(model, str(path))
    return path


def one_op_model(path: Path, op: str, elem_type: int) -> None:
    """A one-node ONNX model y = op(x) over [1, 3] tensors of `elem_type`, saved at `path`."""
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])], op.lower(),
        [helper.make_tensor_value_info("x", elem_type, [1, 3])],
        [helper.make_tensor_value_info("y", elem_type, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, path)


def conv_graph(channels: int, out: int, spatial: tuple[int, ...], bias: bool = True, **attrs: object) -> onnx.ModelProto:
    """One Conv on a static input [1, channels, *spatial], seeded weights: 3x3(x3) unless `kernel` gives another
    side (or one side per axis), padded to "same" unless `pads` says otherwise (test_winograd, test_fft_conv)."""
    kernel = attrs.pop("kernel", 3)
    sides = tuple(kernel) if isinstance(kernel, tuple) else (kernel,) * len(spatial)
    group = int(attrs.get("group", 1))
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out, channels // group) + sides).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), "b"))
        inputs.append("b")
    attrs.setdefault("pads", [side // 2 for side in sides] * 2)
    node = helper.make_node("Conv", inputs, ["y"], name="/block/conv/Conv", **attrs)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, *spatial])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "conv", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """`model`'s one output for input x, in ONNX Runtime on the CPU."""
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
