"""The two image operations of the frame loop as tiny ONNX graphs, so TensorRT runs them beside the networks.

crop:  uint8 frame [1,H,W,3] + theta -> the 256x256 network input [1,3,256,256] in [0,1] (cv2.warpAffine / 255)
paste: generator output [1,3,512,512] + source photo + mask + theta -> the pasted uint8 frame [1,H,W,3], and the
       uint8 crop [1,512,512,3] (the official truncating cast), so warp -> decode -> paste-back stays on the GPU.

Both sample with 2-D GridSample (bilinear, zeros, align_corners=0). The sampling grid is made in-graph from theta
with elementwise Mul/Add over two constant coordinate vectors, not MatMul: TensorRT may run a float32 MatMul in
TF32, whose 10-bit mantissa would move samples by about a pixel across a 1280-px frame. Shapes are static, so
there is one file (and one engine) per image size; the size is in the file name.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20
#: side of the network input the crop graph makes (motion extractor and appearance feature extractor)
CROP_SIZE = 256
#: side of the generator output the paste graph takes
PASTE_CROP_SIZE = 512
#: the model name (file stem) of every image-op graph: its kind and image size
_OP_NAME = re.compile(r"(crop|paste)_\d+x\d+")


def is_image_op(model: str) -> bool:
    """Whether a model name (file stem) is one of the image-op graphs `write_image_op` writes."""
    return _OP_NAME.fullmatch(model) is not None


def pixel_to_normalised(h: int, w: int) -> np.ndarray:
    """3x3 matrix from pixel coordinates (centre of pixel i at i) to align_corners=0 coordinates ((2i+1)/W - 1)."""
    return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])


def theta_for(M: np.ndarray, src_hw: tuple[int, int], out_size: int | tuple[int, int]) -> np.ndarray:
    """GridSample's theta (1,2,3 float32) for cv2.warpAffine(src, M, out_size) with INTER_LINEAR.

    cv2 takes the forward matrix M (source pixel -> output pixel, pixel centres at integers) and samples the
    source at M^-1 (x, y, 1) for every output pixel (x, y). GridSample with align_corners=0 puts the centre of
    pixel i of a W-wide image at (2i+1)/W - 1. So theta = N_src . M^-1 . N_out^-1, where N maps pixels to
    normalised coordinates: it takes a normalised output coordinate to the normalised source coordinate, the
    same convention as torch's affine_grid(align_corners=False).
    """
    out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
    M3 = np.eye(3)
    M3[:2] = np.asarray(M, dtype=np.float64)[:2]
    theta = pixel_to_normalised(*src_hw) @ np.linalg.inv(M3) @ np.linalg.inv(pixel_to_normalised(out_h, out_w))
    return theta[None, :2].astype(np.float32)


def _centres(n: int) -> np.ndarray:
    """Normalised centres of n pixels along one axis."""
    return ((2 * np.arange(n, dtype=np.float64) + 1) / n - 1).astype(np.float32)


class _Graph:
    """Nodes and constants of one graph under construction."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.consts: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def grid(self, theta: str, out_h: int, out_w: int) -> str:
        """[1,out_h,out_w,2] sampling grid: theta[:,0]*u + theta[:,1]*v + theta[:,2] for every output pixel."""
        cols = self.op("Transpose", [theta], "theta_t", perm=[0, 2, 1])  # [1,3,2]: one row per column of theta
        split = self.const("split_ones", np.ones(3, np.int64))
        self.nodes.append(helper.make_node("Split", [cols, split], ["theta_u", "theta_v", "theta_1"], name="split", axis=1))
        u = self.const("u_centres", _centres(out_w).reshape(1, 1, out_w, 1))
        v = self.const("v_centres", _centres(out_h).reshape(1, out_h, 1, 1))
        along_u = self.op("Mul", [u, "theta_u"], "along_u")  # [1,1,W,2]
        along_v = self.op("Mul", [v, "theta_v"], "along_v")  # [1,H,1,2]
        return self.op("Add", [self.op("Add", [along_u, along_v], "grid_uv"), "theta_1"], "grid")

    def sample(self, image: str, grid: str, output: str) -> str:
        return self.op("GridSample", [image, grid], output, mode="linear", padding_mode="zeros", align_corners=0)

    def model(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.consts)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="liveportrait-rt")
        onnx.checker.check_model(model, full_check=True)
        return model


def _value(name: str, elem: int, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def crop_graph(h: int, w: int, size: int = CROP_SIZE) -> onnx.ModelProto:
    """uint8 RGB frame [1,h,w,3] and theta [1,2,3] -> float32 crop [1,3,size,size] in [0,1].

    The sample is rounded to a level before the division, as the CPU path's uint8 crop / 255 is; a Div by 255
    (not a Mul by float32(1/255)) gives the same float32 as core.animator.to_net_input, bit for bit.
    """
    g = _Graph()
    pixels = g.op("Cast", ["image"], "image_f", to=TensorProto.FLOAT)
    planar = g.op("Transpose", [pixels], "image_nchw", perm=[0, 3, 1, 2])
    levels = g.op("Round", [g.sample(planar, g.grid("theta", size, size), "sampled")], "levels")  # cv2 gives uint8
    g.op("Div", [levels, g.const("c255", np.array(255, np.float32))], "crop")
    return g.model(
        f"crop_{h}x{w}",
        [_value("image", TensorProto.UINT8, [1, h, w, 3]), _value("theta", TensorProto.FLOAT, [1, 2, 3])],
        [_value("crop", TensorProto.FLOAT, [1, 3, size, size])],
    )


def paste_graph(h: int, w: int, side: int = PASTE_CROP_SIZE) -> onnx.ModelProto:
    """Generator output, source photo, mask and theta (photo pixel -> crop) -> pasted frame and uint8 crop.

    As on the CPU (core.paste.paste_back): the crop is first truncated to uint8 levels, warped bilinearly and
    rounded (cv2 warps uint8 to uint8), then frame = truncate(clip(mask*warped + (1-mask)*photo, 0, 255)).
    The Floor before each Cast makes the truncation explicit, whatever rounding a backend's Cast uses.
    """
    g = _Graph()
    unit = g.op("Clip", ["crop", g.const("zero", np.array(0, np.float32)), g.const("one", np.array(1, np.float32))], "crop_unit")
    levels = g.op("Floor", [g.op("Mul", [unit, g.const("c255", np.array(255, np.float32))], "crop_255")], "crop_levels")
    g.op("Cast", [g.op("Transpose", [levels], "crop_nhwc", perm=[0, 2, 3, 1])], "crop_u8", to=TensorProto.UINT8)
    sampled = g.sample(levels, g.grid("theta", h, w), "warped_nchw")
    warped = g.op("Round", [g.op("Transpose", [sampled], "warped_raw", perm=[0, 2, 3, 1])], "warped")
    photo = g.op("Cast", ["image"], "photo", to=TensorProto.FLOAT)
    keep = g.op("Sub", ["one", "mask"], "keep")  # the CPU formula term by term, so float32 rounding agrees too
    blended = g.op("Add", [g.op("Mul", ["mask", warped], "from_crop"), g.op("Mul", [keep, photo], "from_photo")], "blended")
    kept = g.op("Clip", [blended, "zero", "c255"], "blended_clipped")
    g.op("Cast", [g.op("Floor", [kept], "frame_levels")], "frame", to=TensorProto.UINT8)
    return g.model(
        f"paste_{h}x{w}",
        [
            _value("crop", TensorProto.FLOAT, [1, 3, side, side]),
            _value("image", TensorProto.UINT8, [1, h, w, 3]),
            _value("mask", TensorProto.FLOAT, [1, h, w, 1]),
            _value("theta", TensorProto.FLOAT, [1, 2, 3]),
        ],
        [_value("frame", TensorProto.UINT8, [1, h, w, 3]), _value("crop_u8", TensorProto.UINT8, [1, side, side, 3])],
    )


def _write_if_changed(path: Path, model: onnx.ModelProto) -> Path:
    """Leave an identical file untouched: its mtime and the engine cache's sha256 key stay valid."""
    data = model.SerializeToString()
    if not (path.is_file() and path.read_bytes() == data):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def write_image_op(out_dir: Path, kind: str, h: int, w: int) -> Path:
    """The crop or paste graph for frames of h x w pixels, as out_dir/{kind}_{h}x{w}.onnx. One kind per call: the
    live loop opens crops on its tracking thread and pastes on its render thread, so neither writes the other's."""
    graphs = {"crop": crop_graph, "paste": paste_graph}
    if kind not in graphs:
        raise ValueError(f"image op must be one of {sorted(graphs)}, got {kind!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _write_if_changed(out_dir / f"{kind}_{h}x{w}.onnx", graphs[kind](h, w))
