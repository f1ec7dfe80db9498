"""Large-kernel 3-D convolutions of the CPU graphs as products in the Fourier domain: W's 7x7x7 mask convolution.

Why: that one convolution is 70 G multiply-adds of the warping module's ~170 G and took 2.2-2.7 s of its 4.5-5.6 s
on this CPU (2 threads), the same in ONNX Runtime and OpenVINO. Winograd would round too much at 7 taps (F(2, 7)
is 5e-5 of the output, F(4, 7) 2e-4). The discrete Fourier transform does not: its points are the roots of unity,
so a transform and its inverse are as exact as a direct convolution in float32 (measured: 8.9e-6 of the output
against PyTorch's float32 convolution, whose own difference from ONNX Runtime's is 8.9e-6). Height and width are
cut into tiles of TILE outputs (the halo overlaps, so each tile's circular convolution is the true one), depth is
transformed whole with enough zero padding for the same reason, and each frequency is one matrix product of the
input channels (complex numbers as pairs of reals). About 7 G multiply-adds in all; 0.29 s in either backend.

Every transform is a MatMul with a constant matrix (the tiling and the zero padding are folded into the matrices),
with Reshape and Transpose between, so both CPU backends read it unchanged; the export verifies the rewritten file
against PyTorch like every other.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from export.graph_rewrite import ConvOperands, GraphBuilder, conv_operands, plain_conv, rewrite_convs

#: outputs per tile side in height and width: 16 ran a 64x64 mask convolution fastest (8: 0.39 s, 16: 0.29 s,
#: 32: 0.25-0.37 s with 2.9x the stored weights)
TILE = 16
#: smallest kernel side rewritten: 3x3x3 convolutions are Winograd's (export.winograd)
MIN_KERNEL = 5
#: smallest input channel count: the transforms cost in proportion to the input channels, the products save in
#: proportion to input x output channels x kernel volume
MIN_CHANNELS = 32


def _plan(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]], initializers: dict[str, onnx.TensorProto],
          tile: int) -> ConvOperands | None:
    """`node`'s operands if it is an ungrouped, stride-1, "same"-padded 3-D convolution of batch 1 with odd kernel
    sides of at least MIN_KERNEL, at least MIN_CHANNELS inputs and height and width multiples of `tile`; else None."""
    conv = conv_operands(node, shapes, initializers)
    if conv is None or conv.weight.ndim != 5 or conv.weight.shape[1] < MIN_CHANNELS:
        return None
    sides = conv.weight.shape[2:]
    if min(sides) < MIN_KERNEL or any(side % 2 == 0 for side in sides):
        return None
    if not plain_conv(node, 3, [side // 2 for side in sides] * 2) or conv.shape[3] % tile or conv.shape[4] % tile:
        return None
    return conv


def tile_dft(size: int, side: int, tile: int, half: bool) -> np.ndarray:
    """The forward transform along one axis of `size` positions: [(re/im, tile index, frequency), size], float64.
    Tile t covers positions t*tile - side//2 + u for u < tile + side - 1 (outside the axis: the zero padding);
    `half` keeps the frequencies 0 .. n/2 only, enough for a real input (the last axis transformed first)."""
    n = tile + side - 1
    frequencies = np.arange(n // 2 + 1 if half else n)
    matrix = np.zeros((2, size // tile, len(frequencies), size))
    for t in range(size // tile):
        for u in range(n):
            position = t * tile - side // 2 + u
            if 0 <= position < size:
                angle = 2 * np.pi * frequencies * u / n
                matrix[0, t, :, position], matrix[1, t, :, position] = np.cos(angle), -np.sin(angle)
    return matrix.reshape(2 * (size // tile) * len(frequencies), size)


def complex_block(matrix: np.ndarray) -> np.ndarray:
    """A complex matrix given as [(re/im, rows), cols] (or complex) acting on complex vectors stored as
    [(re/im, cols)]: the real block [[re, -im], [im, re]]."""
    if np.iscomplexobj(matrix):
        re, im = matrix.real, matrix.imag
    else:
        re, im = np.split(matrix, 2)
    return np.block([[re, -im], [im, re]])


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class _Builder(GraphBuilder):
    def rewrite(self, plan: ConvOperands, tile: int, prefix: str) -> None:
        """The nodes computing plan.node's output: transforms along W, H and D, one product per frequency, the
        inverse transforms along D, H and W, the bias."""
        k, c, rd, rh, rw = plan.weight.shape
        _, _, depth, height, width = plan.shape
        th, tw = height // tile, width // tile
        nh, nw = tile + rh - 1, tile + rw - 1  # transform lengths: a tile and its halo
        kw = nw // 2 + 1  # frequencies kept along W (real input)
        nd = depth + rd // 2  # depth transform length: enough zeros that nothing wraps onto the outputs
        rest = tw * kw * c
        x = self.reshape(plan.node.input[0], prefix, (c, depth * height * width), f"{prefix}/planes")
        x = self.op("Transpose", [x], f"{prefix}/channels_last", perm=[1, 0])
        x = self.reshape(x, prefix, (depth * height, width, c), f"{prefix}/rows")
        w_dft = self.const(f"{prefix}/dft_w", _f32(tile_dft(width, rw, tile, half=True)))
        x = self.op("MatMul", [w_dft, x], f"{prefix}/fw")  # [D*H, (re/im, tw, kw), C]
        x = self.reshape(x, prefix, (depth, height, 2, rest), f"{prefix}/fw4")
        x = self.op("Transpose", [x], f"{prefix}/fw_t", perm=[0, 2, 1, 3])  # [D, re/im, H, (tw, kw, C)]
        x = self.reshape(x, prefix, (depth, 2 * height, rest), f"{prefix}/fw3")
        h_dft = self.const(f"{prefix}/dft_h", _f32(complex_block(tile_dft(height, rh, tile, half=False))))
        x = self.op("MatMul", [h_dft, x], f"{prefix}/fh")  # [D, (re/im, th, kh), (tw, kw, C)]
        x = self.reshape(x, prefix, (depth, 2, th * nh * rest), f"{prefix}/fh3")
        x = self.op("Transpose", [x], f"{prefix}/fh_t", perm=[1, 0, 2])
        x = self.reshape(x, prefix, (2 * depth, th * nh * rest), f"{prefix}/fh2")
        # depth: plane d sits at d + rd//2 of a length-nd transform (the zeros before it are the padding)
        d_dft = np.exp(-2j * np.pi * np.outer(np.arange(nd), np.arange(depth) + rd // 2) / nd)
        x = self.op("MatMul", [self.const(f"{prefix}/dft_d", _f32(complex_block(d_dft))), x], f"{prefix}/fd")
        x = self.reshape(x, prefix, (2, nd, th, nh, tw, kw, c), f"{prefix}/fd7")
        x = self.op("Transpose", [x], f"{prefix}/by_frequency", perm=[1, 3, 5, 2, 4, 0, 6])  # [kd, kh, kw, th, tw, re/im, C]
        frequencies = nd * nh * kw
        x = self.reshape(x, prefix, (frequencies, th * tw, 2 * c), f"{prefix}/fx")
        # the kernel's transform on the same grid (tap j at position j: a correlation), conjugated: Y = sum_c X U
        padded = np.zeros((k, c, nd, nh, nw))
        padded[:, :, :rd, :rh, :rw] = plan.weight
        u = np.conj(np.fft.rfftn(padded, axes=(2, 3, 4))).transpose(2, 3, 4, 1, 0).reshape(frequencies, c, k)
        # stored as re and im; the [[re, im], [-im, re]] product matrix is built in the graph (the backends fold it
        # when they load it), so the file holds half as much
        re, im = self.const(f"{prefix}/u_re", _f32(u.real)), self.const(f"{prefix}/u_im", _f32(u.imag))
        minus_im = self.op("Neg", [im], f"{prefix}/u_minus_im")
        top = self.op("Concat", [re, im], f"{prefix}/u_top", axis=2)
        bottom = self.op("Concat", [minus_im, re], f"{prefix}/u_bottom", axis=2)
        product = self.op("Concat", [top, bottom], f"{prefix}/u", axis=1)  # [(re/im in, C), (re/im out, K)]
        y = self.op("MatMul", [x, product], f"{prefix}/product")  # [frequencies, tiles, (re/im, K)]
        y = self.reshape(y, prefix, (nd, nh * kw * th * tw, 2, k), f"{prefix}/y4")
        y = self.op("Transpose", [y], f"{prefix}/y_t", perm=[2, 0, 1, 3])  # [re/im, kd, rest, K]
        y = self.reshape(y, prefix, (2 * nd, nh * kw * th * tw * k), f"{prefix}/y2")
        d_inverse = np.exp(2j * np.pi * np.outer(np.arange(depth), np.arange(nd)) / nd) / nd
        y = self.op("MatMul", [self.const(f"{prefix}/idft_d", _f32(complex_block(d_inverse))), y], f"{prefix}/id")
        y = self.reshape(y, prefix, (2, depth, nh, kw * th * tw * k), f"{prefix}/id4")
        y = self.op("Transpose", [y], f"{prefix}/id_t", perm=[1, 0, 2, 3])  # [D, re/im, kh, (kw, th, tw, K)]
        y = self.reshape(y, prefix, (depth, 2 * nh, kw * th * tw * k), f"{prefix}/id3")
        h_inverse = np.exp(2j * np.pi * np.outer(np.arange(tile), np.arange(nh)) / nh) / nh
        y = self.op("MatMul", [self.const(f"{prefix}/idft_h", _f32(complex_block(h_inverse))), y], f"{prefix}/ih")
        y = self.reshape(y, prefix, (depth, 2, tile, kw, th, tw, k), f"{prefix}/ih7")
        y = self.op("Transpose", [y], f"{prefix}/ih_t", perm=[6, 0, 4, 2, 5, 1, 3])  # [K, D, th, vh, tw, re/im, kw]
        y = self.reshape(y, prefix, (k * depth * height * tw, 2 * kw), f"{prefix}/ih2")
        # back to real along W: Re(sum_f Z_f e^(2 pi i f v / n)), the frequencies 1 .. n/2 standing for their mirrors too
        weights = np.where((np.arange(kw) == 0) | (2 * np.arange(kw) == nw), 1.0, 2.0)
        w_inverse = np.exp(2j * np.pi * np.outer(np.arange(kw), np.arange(tile)) / nw) * weights[:, None] / nw
        w_inverse_real = np.concatenate([w_inverse.real, -w_inverse.imag])  # [(re/im, kw), v]
        y = self.op("MatMul", [y, self.const(f"{prefix}/idft_w", _f32(w_inverse_real))], f"{prefix}/iw")
        output = plan.node.output[0]
        y = self.reshape(y, prefix, (1, k, depth, height, width), output if plan.bias is None else f"{prefix}/nobias")
        if plan.bias is not None:
            self.op("Add", [y, self.const(f"{prefix}/bias", _f32(plan.bias.reshape(1, k, 1, 1, 1)))], output)


def fft_convs(model: onnx.ModelProto, tile: int = TILE) -> tuple[onnx.ModelProto, Counter[int]]:
    """A copy of `model` with every eligible convolution (see _plan) computed in the Fourier domain in tiles of
    `tile`; and how many were rewritten (by tile)."""
    builder = _Builder()

    def rewrite(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]], initializers: dict[str, onnx.TensorProto]) -> int | None:
        plan = _plan(node, shapes, initializers, tile)
        if plan is None:
            return None
        builder.rewrite(plan, tile, f"{node.output[0]}/fft{tile}")
        return tile

    return rewrite_convs(model, rewrite, builder)
