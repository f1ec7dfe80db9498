"""Winograd rewrite of the CPU graphs: exact transforms, the same convolution to float32 rounding, only the
convolutions it is meant for, and the export's fallback to a more exact plan when one fails verification."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export import onnx_export, winograd
from export.checkpoints import load_network
from export.config import REDUCED
from export.onnx_export import REL_TOLERANCE, export_cpu_graph, prepare_for_export, reference_outputs
from export.networks import example_inputs
from export.winograd import POINTS, toom_cook, winograd_convs
from tests.onnx_models import conv_graph, run


@pytest.mark.parametrize("tile", sorted(POINTS))
def test_transforms_compute_the_correlation_exactly(tile: int) -> None:
    at, g, bt = toom_cook(tile, 3, POINTS[tile])
    rng = np.random.default_rng(tile)
    d, kernel = rng.standard_normal(tile + 2), rng.standard_normal(3)
    direct = np.array([d[i:i + 3] @ kernel for i in range(tile)])
    np.testing.assert_allclose(at @ ((g @ kernel) * (bt @ d)), direct, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"^F\(4, 3\) needs 5 finite points, got 3$"):
        toom_cook(4, 3, (Fraction(0), Fraction(1), Fraction(-1)))


@pytest.mark.parametrize("tile", sorted(POINTS))
@pytest.mark.parametrize("spatial, bias", [((16, 24), True), ((4, 8, 16), False)], ids=["2d-bias", "3d-no-bias"])
def test_rewritten_convolution_matches_the_direct_one(tile: int, spatial: tuple[int, ...], bias: bool) -> None:
    model = conv_graph(40, 36, spatial, bias=bias)
    rewritten, counts = winograd_convs(model, lambda node: tile)
    assert counts == {tile: 1}
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("MatMul") == 2 and ops.count("Conv") == 1  # the Conv left is the fixed input transform
    onnx.checker.check_model(rewritten, full_check=True)
    x = np.random.default_rng(1).standard_normal((1, 40, *spatial)).astype(np.float32)
    want, got = run(model, x), run(rewritten, x)
    assert got.shape == want.shape == (1, 36, *spatial)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    assert {t.name for t in rewritten.graph.initializer}.isdisjoint({"w"})  # the direct weights are not kept


@pytest.mark.parametrize(
    "model",
    [
        conv_graph(40, 36, (16, 16), strides=[2, 2]),
        conv_graph(40, 36, (16, 16), kernel=1),
        conv_graph(40, 36, (16, 16), kernel=7),
        conv_graph(40, 36, (16, 16), pads=[0, 0, 0, 0]),
        conv_graph(40, 36, (16, 16), group=4),
        conv_graph(40, 36, (16, 14)),  # width not a multiple of the tile
        conv_graph(40, 36, (4, 4)),  # one tile: all transform
        conv_graph(40, 12, (16, 16)),  # too few output channels for the transforms to pay
    ],
    ids=["stride2", "1x1", "7x7", "unpadded", "grouped", "ragged", "tiny", "thin"],
)
def test_other_convolutions_stay_direct(model: onnx.ModelProto) -> None:
    rewritten, counts = winograd_convs(model)
    assert not counts
    assert [n.op_type for n in rewritten.graph.node] == ["Conv"]


def test_convolutions_of_one_input_share_its_transform() -> None:
    """SPADE's gamma and beta read the same tensor: one input transform (Conv) serves both products."""
    gamma, beta = conv_graph(40, 36, (16, 16)), conv_graph(40, 32, (16, 16))
    graph = gamma.graph
    beta_node = beta.graph.node[0]
    beta_node.input[1:] = ["w2", "b2"]
    beta_node.output[0] = "y2"
    beta_node.name = "/block/beta/Conv"
    graph.node.append(beta_node)
    for tensor, name in zip(beta.graph.initializer, ("w2", "b2")):
        tensor.name = name
        graph.initializer.append(tensor)
    graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    rewritten, counts = winograd_convs(gamma)
    assert counts == {4: 2}
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Conv") == 1 and ops.count("MatMul") == 4
    x = np.random.default_rng(1).standard_normal((1, 40, 16, 16)).astype(np.float32)
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (gamma, rewritten)]
    (want_gamma, want_beta), (got_gamma, got_beta) = (s.run(None, {"x": x}) for s in sessions)
    for want, got in ((want_gamma, got_gamma), (want_beta, got_beta)):
        assert got.shape == want.shape and np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_the_tile_choice_names_the_nodes_it_skips() -> None:
    model = conv_graph(40, 36, (16, 16))
    seen: list[str] = []
    _, counts = winograd_convs(model, lambda node: seen.append(node) or None)
    assert seen == ["/block/conv/Conv"] and not counts


def test_export_falls_back_to_a_more_exact_plan_when_one_fails_verification(
    reduced_weights: Path, reduced_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan whose F(4, 3) output transform is broken fails verification; the file kept is the F(2, 3) one."""
    exact = winograd.transforms

    def broken(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g, input_kernel, output_matrix = exact(tile)
        return (g, input_kernel, output_matrix * 1.01) if tile == 4 else (g, input_kernel, output_matrix)

    monkeypatch.setattr(winograd, "transforms", broken)
    name = "spade_generator"
    # the reduced G's modulation convolutions are too thin to rewrite: a first plan of F(4, 3) everywhere
    first = onnx_export.CpuGraphPlan("F(4,3)", lambda node: 4)
    monkeypatch.setitem(onnx_export.CPU_GRAPH_PLANS, name, [first, *onnx_export.CPU_GRAPH_PLANS[name][-2:]])
    module = prepare_for_export(load_network(reduced_weights, name, REDUCED), name)
    reference = reference_outputs(module, example_inputs(name, REDUCED, seed=onnx_export.VERIFY_SEED))
    lines: list[str] = []
    path = tmp_path / "spade_generator_cpu.onnx"
    rows = export_cpu_graph(module, name, REDUCED, reduced_models / "spade_generator.onnx", path, reference, lines.append)
    assert lines[0].startswith("spade_generator for the CPU: the plan F(4,3) is ")
    assert lines[0].endswith(f", above {REL_TOLERANCE:g}; trying the next")
    assert lines[1].startswith("spade_generator for the CPU: 12 convolutions as Winograd, F(2,3) (rel err ")
    assert [(r.network, r.output) for r in rows] == [("spade_generator (CPU graph)", "image")]
    assert rows[0].rel_err <= REL_TOLERANCE
    names = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert "winograd2/input_kernel" in names and "winograd4/input_kernel" not in names
