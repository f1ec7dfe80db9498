"""Rewriting chosen convolutions of an ONNX graph into other plain ONNX ops: the walk over the graph, the shapes it
needs and a small node builder, shared by the CPU graphs' fast convolutions (export.winograd, export.fft_conv)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphBuilder:
    """Builds the rewritten graph's node list (kept nodes appended as they come) and the new constants."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.shared: dict[str, str] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def shared_const(self, name: str, value: np.ndarray) -> str:
        """A constant used by every rewritten convolution of one kind (a transform), stored once."""
        if name not in self.shared:
            self.shared[name] = self.const(name, value)
        return self.shared[name]

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def shape(self, prefix: str, dims: tuple[int, ...]) -> str:
        return self.const(f"{prefix}/shape{len(self.initializers)}", np.array(dims, dtype=np.int64))

    def reshape(self, x: str, prefix: str, dims: tuple[int, ...], output: str) -> str:
        return self.op("Reshape", [x, self.shape(prefix, dims)], output)


@dataclass(frozen=True)
class ConvOperands:
    """A Conv node whose weight and bias are constants, with its static batch-1 input shape [1, C, *spatial]."""

    node: onnx.NodeProto
    shape: tuple[int, ...]
    weight: np.ndarray
    bias: np.ndarray | None


def conv_operands(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]],
                  initializers: dict[str, onnx.TensorProto]) -> ConvOperands | None:
    """`node`'s operands, or None when its weight or bias is computed, or its input is not of static batch-1 shape
    with the weight's rank: only such convolutions can be rewritten into constants."""
    bias_name = node.input[2] if len(node.input) > 2 else ""
    if len(node.input) < 2 or node.input[1] not in initializers or (bias_name and bias_name not in initializers):
        return None
    weight = numpy_helper.to_array(initializers[node.input[1]])
    shape = shapes.get(node.input[0])
    if shape is None or len(shape) != weight.ndim or shape[0] != 1:
        return None
    bias = numpy_helper.to_array(initializers[bias_name]) if bias_name else None
    return ConvOperands(node, tuple(shape), weight, bias)


def conv_attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def plain_conv(node: onnx.NodeProto, spatial: int, pads: list[int]) -> bool:
    """Whether `node` is an ungrouped, stride-1, undilated convolution with explicit `pads`."""
    attrs = conv_attributes(node)
    return (attrs.get("group", 1) == 1 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
            and list(attrs.get("strides", [1] * spatial)) == [1] * spatial
            and list(attrs.get("dilations", [1] * spatial)) == [1] * spatial
            and list(attrs.get("pads", [0] * 2 * spatial)) == pads)


#: builds the replacement of one Conv node into the builder and returns its tile, or declines it (None) and builds
#: nothing; gets the node, the static shapes of the graph's tensors and its initializers
ConvRewrite = Callable[[onnx.NodeProto, dict[str, tuple[int, ...]], dict[str, onnx.TensorProto]], int | None]


def rewrite_convs(model: onnx.ModelProto, rewrite: ConvRewrite, builder: GraphBuilder) -> tuple[onnx.ModelProto, Counter[int]]:
    """A copy of `model` with each Conv node that `rewrite` takes replaced by the nodes it built into `builder`, and
    how many it took per tile."""
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)  # data_prop: Resize sizes from Shape ops
    graph = model.graph
    shapes = {
        v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
        for v in [*graph.input, *graph.value_info, *graph.output]
        if all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)
    }
    initializers = {t.name: t for t in graph.initializer}
    rewritten: Counter[int] = Counter()
    for node in graph.node:
        tile = rewrite(node, shapes, initializers) if node.op_type == "Conv" else None
        if tile is None:
            builder.nodes.append(node)
        else:
            rewritten[tile] += 1
    used = {name for node in builder.nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(builder.nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + builder.initializers)
    del graph.value_info[:]  # stale for the rewritten tensors; inferred afresh
    return onnx.shape_inference.infer_shapes(model, data_prop=True), rewritten
