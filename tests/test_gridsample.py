"""5-D GridSample: why the export needs opset 20, and that ORT's trilinear sampling matches PyTorch's."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch.onnx.errors import OnnxExporterError


class _Sample3d(torch.nn.Module):
    """The warping module's sampling call: trilinear, zero padding, align_corners=False."""

    def forward(self, volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _export(volume: torch.Tensor, grid: torch.Tensor, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Sample3d(), (volume, grid), buffer, dynamo=False, opset_version=opset,
            input_names=["volume", "grid"], output_names=["out"],
        )
    return onnx.load_from_string(buffer.getvalue())


def _random_case(shape: tuple[int, ...], grid_dhw: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random volume and a grid spread over [-1.3, 1.3], so some points fall outside the volume."""
    generator = torch.Generator().manual_seed(seed)
    volume = torch.randn(shape, generator=generator)
    grid = torch.rand((shape[0], *grid_dhw, 3), generator=generator) * 2.6 - 1.3
    return volume, grid


@pytest.mark.parametrize(
    "shape, grid_dhw",
    [
        ((1, 1, 2, 3, 4), (2, 3, 4)),
        ((1, 4, 16, 8, 8), (16, 8, 8)),
        ((2, 3, 5, 7, 6), (3, 9, 2)),
        ((1, 2, 4, 16, 16), (4, 16, 16)),
    ],
)
def test_opset20_gridsample_matches_torch(shape: tuple[int, ...], grid_dhw: tuple[int, int, int]) -> None:
    volume, grid = _random_case(shape, grid_dhw, seed=sum(shape))
    outside = (grid.abs() > 1).any(dim=-1).float().mean().item()
    assert outside > 0.2, "the grid must put some points outside [-1, 1] to exercise zero padding"

    model = _export(volume, grid, opset=20)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"volume": volume.numpy(), "grid": grid.numpy()})
    want = _Sample3d()(volume, grid).numpy()

    assert got.shape == (shape[0], shape[1], *grid_dhw)
    assert np.abs(got - want).max() < 1e-5


def test_opset20_node_attributes() -> None:
    volume, grid = _random_case((1, 2, 3, 4, 5), (2, 2, 2), seed=1)
    (node,) = _export(volume, grid, opset=20).graph.node
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, node.domain) == ("GridSample", "")
    assert attributes == {"mode": b"linear", "padding_mode": b"zeros", "align_corners": 0}


@pytest.mark.parametrize("opset", [16, 17, 19])
def test_older_opsets_cannot_export_5d_gridsample(opset: int) -> None:
    """GridSample exists since opset 16, but only for 4-D input; 5-D (volumetric) input arrived with opset 20."""
    volume, grid = _random_case((1, 2, 3, 4, 5), (2, 2, 2), seed=2)
    with pytest.raises(OnnxExporterError, match="GridSample with 5D volumetric input"):
        _export(volume, grid, opset=opset)


def test_exported_warping_module_uses_standard_gridsample(reduced_models: Path) -> None:
    model = onnx.load(str(reduced_models / "warping_module.onnx"))
    node_domains = {node.domain for node in model.graph.node}
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    grid_samples = [node for node in model.graph.node if node.op_type == "GridSample"]

    assert len(grid_samples) == 2  # the 22 sparse motions (one batched call), then the final warp
    assert node_domains == {""}, f"custom-domain nodes found: {node_domains - {''}}"
    assert opsets.get("", 0) == 20
    assert set(opsets) <= {"", "ai.onnx"}
