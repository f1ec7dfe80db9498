"""Winograd F(m x m, 3x3) for the CPU graphs: every large 3x3 (and 3x3x3) convolution of an ONNX graph rewritten as
an input transform, one batched matrix product and an output transform.

Why: on a CPU these convolutions are compute-bound (the SPADE generator is ~450 G multiply-adds a frame, the
warping module ~170 G) and every framework already runs them near the cores' peak; F(4x4, 3x3) needs 36
multiplications per 16 outputs instead of 144, and the rewritten graph runs a 512-channel 64x64 convolution in
about 100 ms instead of 250 ms in ONNX Runtime and OpenVINO alike (2 cores). It is plain ONNX (Conv, MatMul, Reshape, Transpose,
Pad, Slice, DepthToSpace), so both CPU backends read it unchanged; the GPU backends keep the native graphs. A 3x3x3 convolution
is Winograd over height and width and a direct sum over its three depth taps.
Exactness: the transforms are exact rationals (Toom-Cook on POINTS and infinity; for F(4, 3) 1/2 instead of the
textbook 2 halves the float32 error); the only difference from the direct convolution is float32 rounding, about
ten times a direct one's for F(4, 3) and twice for F(2, 3), and the export verifies each rewritten file against
PyTorch like every other (export.onnx_export.CPU_GRAPH_PLANS chooses per network).
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np
import onnx

from export.graph_rewrite import GraphBuilder, conv_operands, plain_conv, rewrite_convs

#: the finite interpolation points of F(m, 3) by m, the outputs per tile side: F(4, 3) multiplies 4x less than a
#: direct convolution, F(2, 3) 2.25x less with the rounding error of a direct one
POINTS = {
    2: (Fraction(0), Fraction(1), Fraction(-1)),
    4: (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-2)),
}
#: smallest input and output channel count a convolution must have to be rewritten: the transforms cost in
#: proportion to C + K per pixel, the product saves in proportion to C x K (measured on the CPU, 2 threads: a
#: 64 -> 12 convolution at 256x256 is 1.7x slower rewritten, 256 -> 128 at the same size 1.75x faster)
MIN_CHANNELS = 32
#: smallest height and width (a 4x4 plane is one tile: all transform, no saving)
MIN_SIDE = 8


def _poly_mul(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def toom_cook(m: int, r: int, points: tuple[Fraction, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A^T (m x a), G (a x r) and B^T (a x a) of F(m, r) on `points` plus the point at infinity, a = m + r - 1:
    y = A^T [(G g) * (B^T d)] is the correlation y_i = sum_k d_(i+k) g_k. Built exactly, returned as float64."""
    a = m + r - 1
    if len(points) != a - 1:
        raise ValueError(f"F({m}, {r}) needs {a - 1} finite points, got {len(points)}")
    at = [[p**i for p in points] + [Fraction(int(i == m - 1))] for i in range(m)]
    g_rows = []
    for j, p in enumerate(points):
        denominator = Fraction(1)
        for k, q in enumerate(points):
            if k != j:
                denominator *= p - q
        g_rows.append([p**i / denominator for i in range(r)])
    g_rows.append([Fraction(int(i == r - 1)) for i in range(r)])
    bt = []
    for j in range(a):  # row j: coefficients of prod_(k != j) (x - p_k); the last row is the full product
        coefficients = [Fraction(1)]
        for k, q in enumerate(points):
            if k != j:
                coefficients = _poly_mul(coefficients, [-q, Fraction(1)])
        bt.append(coefficients + [Fraction(0)] * (a - len(coefficients)))
    return tuple(np.array(x, dtype=np.float64) for x in (at, g_rows, bt))  # type: ignore[return-value]


@functools.lru_cache(maxsize=None)
def transforms(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """G (float64, for the weights), the input transform as a [a*a, 1, a, a] convolution kernel and the output
    transform as an [m*m, a*a] matrix (float32) of F(tile, 3), a = tile + 2."""
    at, g, bt = toom_cook(tile, 3, POINTS[tile])
    a = tile + 2
    input_kernel = np.einsum("ai,bj->abij", bt, bt).reshape(a * a, 1, a, a).astype(np.float32)
    output_matrix = np.einsum("pa,qb->pqab", at, at).reshape(tile * tile, a * a).astype(np.float32)
    return g, input_kernel, output_matrix


@dataclass(frozen=True)
class ConvPlan:
    """One convolution to rewrite as F(tile, 3): its input shape [1, C, (D,) H, W], weight [K, C, 3, 3(, 3)] and
    bias."""

    node: onnx.NodeProto
    tile: int
    shape: tuple[int, ...]
    weight: np.ndarray
    bias: np.ndarray | None


def _plan(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]], initializers: dict[str, onnx.TensorProto],
          tile: int, min_channels: int) -> ConvPlan | None:
    """The plan for `node` if it is a stride-1, pad-1, ungrouped 3x3(x3) convolution of batch 1 with at least
    `min_channels` input and output channels, whose height and width are multiples of `tile` and at least MIN_SIDE;
    else None."""
    conv = conv_operands(node, shapes, initializers)
    if conv is None or conv.weight.ndim not in (4, 5):
        return None
    weight, spatial = conv.weight, conv.weight.ndim - 2
    if weight.shape[2:] != (3,) * spatial or not plain_conv(node, spatial, [1] * 2 * spatial):
        return None
    height, width = conv.shape[-2:]
    if height % tile or width % tile or min(height, width) < MIN_SIDE or min(weight.shape[:2]) < min_channels:
        return None
    return ConvPlan(node, tile, conv.shape, weight, conv.bias)


class _Builder(GraphBuilder):
    """The rewritten graph, each convolution under its own name prefix; remembers each input's transform."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[tuple[str, int], str] = {}

    def transformed_input(self, plan: ConvPlan, prefix: str) -> str:
        """plan.node's input in the Winograd domain: [a*a, C, tiles], or [a*a, C, (D+2) tiles] with the depth padding
        for a 3-D convolution. Made once per input tensor and tile: convolutions that read the same tensor (each
        SPADE's gamma and beta) share it."""
        key = (plan.node.input[0], plan.tile)
        if key in self.inputs:
            return self.inputs[key]
        a, m = plan.tile + 2, plan.tile
        c = plan.weight.shape[1]
        depth = plan.shape[2] if plan.weight.ndim == 5 else 1
        height, width = plan.shape[-2:]
        tiles = (height // m) * (width // m)
        x = self.op("Reshape", [plan.node.input[0], self.shape(prefix, (c * depth, 1, height, width))], f"{prefix}/planes")
        kernel = self.shared_const(f"winograd{m}/input_kernel", transforms(m)[1])
        v = self.op("Conv", [x, kernel], f"{prefix}/tiles", strides=[m, m], pads=[1, 1, 1, 1])  # [C*D, a*a, th, tw]
        # points last first: OpenVINO computes this Conv channels-last and reads that layout as it is; taking the
        # points first straight from [C*D, a*a, th, tw] made it reorder the whole output (1.3 s of G's 7.5 s)
        v = self.op("Transpose", [v], f"{prefix}/channels_last", perm=[0, 2, 3, 1])  # [C*D, th, tw, a*a]
        v = self.op("Reshape", [v, self.shape(prefix, (c, depth, tiles, a * a))], f"{prefix}/v4")
        v = self.op("Transpose", [v], f"{prefix}/v", perm=[3, 0, 1, 2])  # [a*a, C, D, tiles]
        if depth == 1:
            v = self.op("Reshape", [v, self.shape(prefix, (a * a, c, tiles))], f"{prefix}/vflat")
        else:
            pads = self.const(f"{prefix}/pads", np.array([0, 0, 1, 0, 0, 0, 1, 0], dtype=np.int64))
            v = self.op("Pad", [v, pads], f"{prefix}/vpad")  # zero depth planes: the depth padding
            v = self.op("Reshape", [v, self.shape(prefix, (a * a, c, (depth + 2) * tiles))], f"{prefix}/vflat")
        self.inputs[key] = v
        return v

    def rewrite(self, plan: ConvPlan, prefix: str) -> None:
        """The nodes computing plan.node's output from its input: transform, product, inverse transform."""
        a, m = plan.tile + 2, plan.tile
        g, _, output_matrix = transforms(m)
        k, c = plan.weight.shape[:2]
        depth = plan.shape[2] if plan.weight.ndim == 5 else 1
        height, width = plan.shape[-2:]
        th, tw = height // m, width // m
        tiles = th * tw
        v = self.transformed_input(plan, prefix)
        # U[ab, k, c] = G g G^T per depth tap; float64 so the only rounding is the final cast
        u = np.einsum("ai,kc...ij,bj->...abkc", g, plan.weight.astype(np.float64), g)
        if depth == 1:
            u = u.reshape(a * a, k, c).astype(np.float32)
            y = self.op("MatMul", [self.const(f"{prefix}/U", u), v], f"{prefix}/product")  # [a*a, K, tiles]
        else:
            # one product for the three depth taps, [a*a, 3K, (D+2) tiles]; tap z reads depth planes z .. z+D-1
            u = np.moveaxis(u, 0, 2).reshape(a * a, 3 * k, c).astype(np.float32)
            y = self.op("MatMul", [self.const(f"{prefix}/U", u), v], f"{prefix}/taps")
            y = self.op("Reshape", [y, self.shape(prefix, (a * a, 3, k, depth + 2, tiles))], f"{prefix}/taps5")
            taps = []
            for z in range(3):
                ends = self.const(f"{prefix}/end{z}", np.array([z + 1, z + depth], dtype=np.int64))
                starts = self.const(f"{prefix}/start{z}", np.array([z, z], dtype=np.int64))
                axes = self.shared_const("winograd/tap_axes", np.array([1, 3], dtype=np.int64))
                taps.append(self.op("Slice", [y, starts, ends, axes], f"{prefix}/tap{z}"))
            y = self.op("Sum", taps, f"{prefix}/product")  # [a*a, 1, K, D, tiles]
        y = self.op("Reshape", [y, self.shape(prefix, (a * a, k * depth * tiles))], f"{prefix}/flat")
        out_matrix = self.shared_const(f"winograd{m}/output_matrix", output_matrix)
        y = self.op("MatMul", [out_matrix, y], f"{prefix}/outputs")  # [m*m, K*D*tiles]
        # tile pixel (p, q) of channel-plane (k, d) to row th*m + p, column tw*m + q: DepthToSpace's DCR order, and
        # 4x faster in ONNX Runtime than the equivalent 6-D Transpose
        y = self.op("Reshape", [y, self.shape(prefix, (1, m * m * k * depth, th, tw))], f"{prefix}/blocks")
        y = self.op("DepthToSpace", [y], f"{prefix}/ordered", blocksize=m, mode="DCR")  # [1, K*D, H, W]
        out_shape = (1, k, height, width) if plan.weight.ndim == 4 else (1, k, depth, height, width)
        output = plan.node.output[0]
        y = self.op("Reshape", [y, self.shape(prefix, out_shape)], output if plan.bias is None else f"{prefix}/nobias")
        if plan.bias is not None:
            bias = plan.bias.astype(np.float32).reshape((1, k) + (1,) * (len(out_shape) - 2))
            self.op("Add", [y, self.const(f"{prefix}/bias", bias)], output)


def winograd_convs(
    model: onnx.ModelProto, tile_for: Callable[[str], int | None] = lambda name: 4, min_channels: int = MIN_CHANNELS
) -> tuple[onnx.ModelProto, Counter[int]]:
    """A copy of `model` with every eligible convolution (see _plan) rewritten as F(m, 3), m = tile_for(the Conv
    node's name) (None: kept direct); and how many were rewritten per m."""
    builder = _Builder()

    def rewrite(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]], initializers: dict[str, onnx.TensorProto]) -> int | None:
        tile = tile_for(node.name)
        plan = _plan(node, shapes, initializers, tile, min_channels) if tile else None
        if plan is None:
            return None
        builder.rewrite(plan, f"{node.output[0]}/winograd{tile}")
        return tile

    return rewrite_convs(model, rewrite, builder)
