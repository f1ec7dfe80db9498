"""Our LivePortrait networks: exact official state_dict layout, reduced forwards, and formula pieces by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.config import OFFICIAL, REDUCED, ArchConfig, ArchFileError, arch_for, arch_file_text
from engines.layout import ARCH_FILE
from export.networks import (
    NETWORK_IO,
    NETWORK_NAMES,
    UnknownNetworkError,
    build_network,
    example_inputs,
    fold_spectral_norm,
    input_shapes,
)
from export.networks.motion import GRN, ChannelsFirstLayerNorm
from export.networks.warping import gaussian_heatmaps, identity_grid


@pytest.fixture(scope="module")
def fixture_nets(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "liveportrait_state_dicts.json").read_text())


def as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_official_state_dict_equals_fixture(name: str, fixture_nets: dict) -> None:
    ref = fixture_nets[name]
    net = build_network(name, OFFICIAL)
    state = net.state_dict()
    ours = [(key, list(value.shape)) for key, value in state.items()]
    assert ours == [(key, spec["shape"]) for key, spec in ref["state_dict"].items()]
    assert len(state) == ref["num_state_dict_keys"]
    params = sum(p.numel() for p in net.parameters())
    assert params == ref["total_parameters"]
    assert sum(v.numel() for v in state.values()) == ref["state_dict_elements"]
    int_keys = [key for key, spec in ref["state_dict"].items() if spec["dtype"] == "int64"]
    assert [key for key, value in state.items() if value.dtype == torch.int64] == int_keys


def test_official_io_shapes_match_fixture(fixture_nets: dict) -> None:
    for name in NETWORK_NAMES:
        want = {key: tuple(spec["shape"]) for key, spec in fixture_nets[name]["forward_inputs"].items()}
        assert input_shapes(name, OFFICIAL) == want, name
    motion = fixture_nets["motion_extractor"]["forward_outputs"]
    assert list(motion) == list(NETWORK_IO["motion_extractor"][1])


def test_retargeting_parameter_total(fixture_nets: dict) -> None:
    total = sum(sum(p.numel() for p in build_network(n, OFFICIAL).parameters()) for n in ("stitching", "lip", "eye"))
    assert total == fixture_nets["stitching_retargeting_module"]["total_parameters"] == 227263


@pytest.fixture(scope="module")
def warping() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("warping_module", REDUCED)


#: (inputs, outputs) of one forward
Forward = tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]


@pytest.fixture(scope="module")
def still_warp(warping: torch.nn.Module) -> Forward:
    """(inputs, outputs) of the reduced warping module when the keypoints do not move: its forward takes seconds
    here, so this one serves the shape, export-mode and identity checks."""
    feature, kp, _ = example_inputs("warping_module", REDUCED)
    with torch.no_grad():
        return (feature, kp, kp), as_tuple(warping(feature, kp, kp))


def test_reduced_forward_shapes(warping: torch.nn.Module, still_warp: Forward) -> None:
    expected = {
        "appearance_feature_extractor": [(1, 4, 16, 64, 64)],
        "motion_extractor": [(1, 66)] * 3 + [(1, 3), (1, 63), (1, 1), (1, 63)],
        "warping_module": [(1, 16, 64, 64), (1, 1, 64, 64), (1, 16, 64, 64, 3)],
        "spade_generator": [(1, 3, 512, 512)],
        "stitching": [(1, 65)],
        "lip": [(1, 63)],
        "eye": [(1, 63)],
    }
    torch.manual_seed(0)
    with torch.no_grad():
        for name in NETWORK_NAMES:
            if name == "warping_module":
                inputs, outs = still_warp
            else:
                outs = as_tuple(build_network(name, REDUCED)(*example_inputs(name, REDUCED)))
            assert [tuple(o.shape) for o in outs] == expected[name], name
            assert all(torch.isfinite(o).all() for o in outs), name
            if name == "warping_module":  # the export mode returns the same `out` alone
                warping.out_only = True
                assert torch.equal(warping(*inputs), outs[0])
                warping.out_only = False


def test_identity_grid_is_align_corners_true_linspace() -> None:
    grid = identity_grid(16, 64, 64)
    assert grid.shape == (16, 64, 64, 3)
    d, h, w = 5, 10, 40
    np.testing.assert_allclose(grid[d, h, w].numpy(), [2 * w / 63 - 1, 2 * h / 63 - 1, 2 * d / 15 - 1], atol=1e-7)
    assert grid[0, 0, 0].tolist() == [-1.0, -1.0, -1.0]
    assert grid[15, 63, 63].tolist() == [1.0, 1.0, 1.0]


def test_gaussian_heatmap_values() -> None:
    grid = identity_grid(16, 64, 64)
    kp = grid[3, 20, 7].reshape(1, 1, 3)
    heat = gaussian_heatmaps(grid, kp)
    assert heat.shape == (1, 1, 16, 64, 64)
    assert heat[0, 0, 3, 20, 7].item() == pytest.approx(1.0)
    # one x step is 2/63: exp(-0.5 * (2/63)^2 / 0.01)
    assert heat[0, 0, 3, 20, 8].item() == pytest.approx(np.exp(-0.5 * (2 / 63) ** 2 / 0.01), rel=1e-5)


def test_sparse_motions_are_per_keypoint_translations(warping: torch.nn.Module) -> None:
    dm = warping.dense_motion_network
    gen = torch.Generator().manual_seed(1)
    kp_d, kp_s = torch.rand(1, 21, 3, generator=gen), torch.rand(1, 21, 3, generator=gen)
    motions = dm.sparse_motions(kp_d, kp_s)
    assert motions.shape == (1, 22, 16, 64, 64, 3)
    assert torch.equal(motions[0, 0], dm.grid)
    torch.testing.assert_close(motions[0, 5], dm.grid - kp_d[0, 4] + kp_s[0, 4])


def test_deformation_is_identity_when_keypoints_do_not_move(warping: torch.nn.Module, still_warp: Forward) -> None:
    # every sparse motion is then the identity grid, and the softmax mask weights sum to one
    _, (_, occlusion, deformation) = still_warp
    torch.testing.assert_close(deformation[0], warping.dense_motion_network.grid, atol=1e-6, rtol=0)
    assert ((occlusion > 0) & (occlusion < 1)).all()


def test_grn_against_hand_computation() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 4, 5, generator=gen)  # NHWC
    grn = GRN(5)
    with torch.no_grad():
        grn.gamma.copy_(torch.randn(1, 1, 1, 5, generator=gen))
        grn.beta.copy_(torch.randn(1, 1, 1, 5, generator=gen))
        got = grn(x).numpy()
    a, gamma, beta = x.numpy()[0], grn.gamma.detach().numpy().ravel(), grn.beta.detach().numpy().ravel()
    g = np.array([np.sqrt((a[:, :, c] ** 2).sum()) for c in range(5)])
    n = g / (g.mean() + 1e-6)
    np.testing.assert_allclose(got[0], gamma * (a * n) + beta + a, rtol=1e-5, atol=1e-6)


def test_channels_first_layernorm_against_hand_computation() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 2, 3, generator=gen) * 3 + 1
    norm = ChannelsFirstLayerNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, 0.2, -0.3]))
        got = norm(x).numpy()
    a = x.numpy()[0]
    mean, var = a.mean(axis=0), a.var(axis=0)  # biased variance over channels, per pixel
    want = (a - mean) / np.sqrt(var + 1e-6) * np.array([1, 2, -1, 0.5])[:, None, None]
    want += np.array([0, 0.1, 0.2, -0.3])[:, None, None]
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)


def test_fold_spectral_norm_keeps_eval_output() -> None:
    torch.manual_seed(0)
    net = build_network("spade_generator", REDUCED)
    block = net.up_0  # learned shortcut: all three spectral-normed convs
    x, segmap = torch.randn(1, 32, 16, 16), torch.randn(1, 16, 8, 8)
    w, u, v = block.conv_s.weight_orig.detach().clone(), block.conv_s.weight_u.clone(), block.conv_s.weight_v.clone()
    with torch.no_grad():
        before = block(x, segmap)
        fold_spectral_norm(net)
        after = block(x, segmap)
    assert torch.abs(after - before).max().item() < 1e-5
    keys = list(net.state_dict())
    assert not [k for k in keys if k.endswith(("weight_orig", "weight_u", "weight_v"))]
    assert "G_middle_0.conv_0.weight" in keys and "up_1.conv_s.weight" in keys
    sigma = torch.dot(u, w.reshape(w.shape[0], -1) @ v)
    torch.testing.assert_close(block.conv_s.weight.detach(), w / sigma)


def test_sparse_motions_add_in_the_official_order() -> None:
    """G - kp_driving + kp_source, left to right in float32, as the official code (not G + (kp_s - kp_d))."""
    from export.networks.warping import DenseMotionNetwork

    dense = DenseMotionNetwork(REDUCED)
    gen = torch.Generator().manual_seed(0)
    kp_d, kp_s = (torch.rand(1, REDUCED.num_kp, 3, generator=gen) - 0.5 for _ in range(2))
    motions = dense.sparse_motions(kp_d, kp_s).numpy()
    grid = dense.grid.numpy()
    assert motions.shape == (1, REDUCED.num_kp + 1, *grid.shape)
    np.testing.assert_array_equal(motions[0, 0], grid)  # the background's identity
    expected = grid[None] - kp_d.numpy()[0, :, None, None, None] + kp_s.numpy()[0, :, None, None, None]
    np.testing.assert_array_equal(motions[0, 1:], expected)


def test_build_network_rejects_unknown_name() -> None:
    with pytest.raises(UnknownNetworkError) as info:
        build_network("generator", REDUCED)
    assert str(info.value) == (
        "unknown network 'generator'; use one of appearance_feature_extractor, motion_extractor, "
        "warping_module, spade_generator, stitching, lip, eye"
    )


def test_arch_config_rejects_widths_that_do_not_chain() -> None:
    with pytest.raises(ValueError, match=r"g_input_channels \(32\) must equal the warping output width \(256\)"):
        ArchConfig(g_input_channels=32)


def test_arch_for_reads_the_arch_file(tmp_path: Path) -> None:
    assert arch_for(tmp_path) == OFFICIAL
    (tmp_path / ARCH_FILE).parent.mkdir(parents=True)
    (tmp_path / ARCH_FILE).write_text(arch_file_text("reduced"))
    assert arch_for(tmp_path) == REDUCED
    (tmp_path / ARCH_FILE).write_text('{"preset": "tiny"}')
    with pytest.raises(ArchFileError) as info:
        arch_for(tmp_path)
    assert str(info.value) == f"{tmp_path / ARCH_FILE} names unknown preset 'tiny'; use one of ['official', 'reduced']"


@pytest.mark.slow
def test_official_forward_shapes(fixture_nets: dict) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for name in NETWORK_NAMES:
            outs = as_tuple(build_network(name, OFFICIAL)(*example_inputs(name, OFFICIAL)))
            ref = fixture_nets[name]["forward_outputs"]
            if "shape" in ref:
                want = [tuple(ref["shape"])]
            else:
                names = ("out", "occlusion_map", "deformation") if name == "warping_module" else NETWORK_IO[name][1]
                want = [tuple(ref[n]["shape"]) for n in names]
            assert [tuple(o.shape) for o in outs] == want, name
