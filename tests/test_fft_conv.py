"""The Fourier-domain rewrite of large 3-D convolutions (W's 7x7x7 mask convolution): the same convolution to
float32 rounding, only the convolutions it is meant for, half the product weights stored, and present in the
exported CPU graph of W."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engines.layout import CPU_ONNX, NETWORK_ONNX
from export.fft_conv import TILE, complex_block, fft_convs, tile_dft
from tests.onnx_models import conv_graph, run


def test_tile_transform_is_the_dft_of_each_tile_with_its_halo() -> None:
    """Tile t of a length-32 axis, 16 outputs and a 5-tap kernel, reads positions 16t - 2 .. 16t + 17 (zeros
    outside): numpy's FFT of that slice."""
    x = np.random.default_rng(0).standard_normal(32)
    matrix = tile_dft(32, 5, 16, half=False)  # [(re/im, tile, frequency), 32]
    re, im = np.split(matrix @ x, 2)
    padded = np.pad(x, 2)
    for t in range(2):
        want = np.fft.fft(padded[16 * t:16 * t + 20])
        np.testing.assert_allclose(re.reshape(2, 20)[t] + 1j * im.reshape(2, 20)[t], want, atol=1e-12)
    half = tile_dft(32, 5, 16, half=True)
    assert half.shape == (2 * 2 * 11, 32)
    m, z = np.array([[1j, 2.0], [0.5, -1 - 1j]]), np.array([1 + 2j, -0.5j])
    stacked = complex_block(m) @ np.concatenate([z.real, z.imag])  # complex numbers as (re, im) halves
    np.testing.assert_allclose(stacked, np.concatenate([(m @ z).real, (m @ z).imag]), atol=1e-15)


@pytest.mark.parametrize(
    "spatial, kernel, bias",
    [((16, 32, 16), 7, True), ((5, 16, 32), (5, 7, 5), False)],
    ids=["7x7x7-bias", "5x7x5-no-bias"],
)
def test_rewritten_convolution_matches_the_direct_one(spatial: tuple[int, ...], kernel: int | tuple[int, ...], bias: bool) -> None:
    model = conv_graph(40, 6, spatial, bias=bias, kernel=kernel)
    rewritten, counts = fft_convs(model)
    assert counts == {TILE: 1}
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Conv" not in ops and ops.count("MatMul") == 7  # three transforms, the product, three inverses
    x = np.random.default_rng(1).standard_normal((1, 40, *spatial)).astype(np.float32)
    want, got = run(model, x), run(rewritten, x)
    assert got.shape == want.shape == (1, 6, *spatial)
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-6


def test_the_product_weights_are_stored_once_as_real_and_imaginary_parts() -> None:
    """Only re and im of the kernel's transform are stored ([frequencies, C, K] each); the [[re, im], [-im, re]]
    product matrix the MatMul reads is built in the graph."""
    spatial = (16, 32, 16)
    rewritten, _ = fft_convs(conv_graph(40, 6, spatial, kernel=7))
    stored = {t.name.rsplit("/", 1)[-1]: numpy_helper.to_array(t).shape for t in rewritten.graph.initializer}
    frequencies = (16 + 3) * (TILE + 6) * ((TILE + 6) // 2 + 1)
    assert stored["u_re"] == stored["u_im"] == (frequencies, 40, 6)
    assert not any(shape == (frequencies, 80, 12) for shape in stored.values())


@pytest.mark.parametrize(
    "model",
    [
        conv_graph(40, 6, (8, 16, 16)),  # 3x3x3: Winograd's
        conv_graph(40, 6, (16, 16), kernel=7),  # 2-D
        conv_graph(40, 6, (8, 16, 16), kernel=(7, 7, 6)),  # even side
        conv_graph(40, 6, (8, 16, 16), kernel=7, strides=[1, 2, 2]),
        conv_graph(40, 6, (8, 16, 16), kernel=7, pads=[0] * 6),
        conv_graph(40, 8, (8, 16, 16), kernel=7, group=4),
        conv_graph(40, 6, (8, 16, 24), kernel=7),  # width not a multiple of the tile
        conv_graph(16, 6, (8, 16, 16), kernel=7),  # too few input channels for the transforms to pay
    ],
    ids=["3x3x3", "2d", "even", "stride2", "unpadded", "grouped", "ragged", "thin"],
)
def test_other_convolutions_stay_direct(model: onnx.ModelProto) -> None:
    rewritten, counts = fft_convs(model)
    assert not counts
    assert [n.op_type for n in rewritten.graph.node] == ["Conv"]


def test_the_exported_cpu_graph_of_w_has_its_mask_convolution_in_the_fourier_domain(reduced_models: Path) -> None:
    """No 7x7x7 convolution is left in W's CPU graph; its mask convolution's nodes are there (the CPU graph's output
    against the native file is test_cpu_backend's, against PyTorch the export's)."""
    graph = onnx.load(str(reduced_models / CPU_ONNX[NETWORK_ONNX["warping_module"]]), load_external_data=False).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    kernels = [weights[n.input[1]][2:] for n in graph.node if n.op_type == "Conv" and n.input[1] in weights]
    assert (7, 7, 7) not in kernels
    fourier = [n.name for n in graph.node if f"/fft{TILE}/" in n.name]
    assert fourier and all(name.startswith("/dense_motion_network/mask/") for name in fourier)
