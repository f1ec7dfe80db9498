"""Fake weights in the official layout, strict loading, and the one-line errors for broken weight folders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from export.checkpoints import CheckpointError, load_all, load_network
from export.config import OFFICIAL, REDUCED
from export.fake_weights import write_fake_weights
from engines.layout import ARCH_FILE, CHECKPOINTS, RETARGETING_CHECKPOINT, WEIGHT_FILES
from export.networks import NETWORK_NAMES

MOTION = CHECKPOINTS["motion_extractor"]


@pytest.fixture
def weights(reduced_weights: Path, tmp_path: Path) -> Path:
    """A private copy of the reduced fake weights that a test may break."""
    return Path(shutil.copytree(reduced_weights, tmp_path / "weights"))


def read(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def assert_same_state(model: torch.nn.Module, state: dict) -> None:
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_reduced_round_trip(reduced_weights: Path) -> None:
    nets = load_all(reduced_weights)
    assert list(nets) == list(NETWORK_NAMES)
    assert all(not net.training for net in nets.values())
    for name, rel in CHECKPOINTS.items():
        assert_same_state(nets[name], read(reduced_weights / rel))
    assert nets["appearance_feature_extractor"].second.out_channels == REDUCED.f_max_features
    retargeting = read(reduced_weights / RETARGETING_CHECKPOINT)
    stripped = {k.removeprefix("module."): v for k, v in retargeting["retarget_mouth"].items()}
    assert_same_state(nets["lip"], stripped)


def test_reduced_folder_layout(reduced_weights: Path) -> None:
    assert json.loads((reduced_weights / ARCH_FILE).read_text()) == {"preset": "reduced"}
    for rel in WEIGHT_FILES:
        assert (reduced_weights / rel).is_file(), rel
    # BatchNorm stats are varied but stay valid
    warping = read(reduced_weights / CHECKPOINTS["warping_module"])
    assert float(warping["third.norm.running_var"].min()) > 0
    assert not torch.equal(warping["third.norm.running_mean"], torch.zeros(16))


def test_retargeting_file_has_the_official_ddp_layout(reduced_weights: Path, fixtures_dir: Path) -> None:
    fixture = json.loads((fixtures_dir / "liveportrait_state_dicts.json").read_text())
    data = read(reduced_weights / RETARGETING_CHECKPOINT)
    assert list(data) == ["retarget_shoulder", "retarget_mouth", "retarget_eye"]
    for sub_key, name in [("retarget_shoulder", "stitching"), ("retarget_mouth", "lip"), ("retarget_eye", "eye")]:
        want = {f"module.{k}": spec["shape"] for k, spec in fixture[name]["state_dict"].items()}
        assert {k: list(v.shape) for k, v in data[sub_key].items()} == want


def test_official_round_trip(weights: Path, fixtures_dir: Path) -> None:
    fixture = json.loads((fixtures_dir / "liveportrait_state_dicts.json").read_text())
    files = write_fake_weights(weights, seed=3, overwrite=True)  # official over reduced: the arch file goes
    assert not (weights / ARCH_FILE).exists()
    assert sorted(files) == sorted(weights / rel for rel in WEIGHT_FILES)
    for name in NETWORK_NAMES:
        net = load_network(weights, name)
        assert sum(p.numel() for p in net.parameters()) == fixture[name]["total_parameters"], name
    state = read(weights / CHECKPOINTS["spade_generator"])
    assert {k: list(v.shape) for k, v in state.items()} == {
        k: spec["shape"] for k, spec in fixture["spade_generator"]["state_dict"].items()
    }


def test_fake_weights_are_deterministic_per_seed(tmp_path: Path, reduced_weights: Path) -> None:
    write_fake_weights(tmp_path / "same", seed=0, reduced=True)
    write_fake_weights(tmp_path / "other", seed=1, reduced=True)
    for rel in CHECKPOINTS.values():
        ref, same, other = (read(root / rel) for root in (reduced_weights, tmp_path / "same", tmp_path / "other"))
        assert all(torch.equal(ref[k], same[k]) for k in ref), rel
        assert not all(torch.equal(ref[k], other[k]) for k in ref), rel


def test_fake_motion_is_moderate(reduced_weights: Path) -> None:
    motion = load_network(reduced_weights, "motion_extractor")
    with torch.no_grad():
        image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
        pitch, yaw, roll, t, exp, scale, kp = motion(image)
    assert 0.5 < scale.item() < 1.5
    assert exp.abs().max().item() < 0.5 and t.abs().max().item() < 0.5
    assert kp.abs().max().item() < 3.0
    assert all(torch.isfinite(x).all() for x in (pitch, yaw, roll))


def test_refuses_to_overwrite(weights: Path) -> None:
    with pytest.raises(FileExistsError) as info:
        write_fake_weights(weights, reduced=True)
    assert str(info.value) == (
        f"{weights / CHECKPOINTS['appearance_feature_extractor']} already exists; choose an empty folder "
        "or pass --force (overwrite=True) to replace it"
    )
    write_fake_weights(weights, seed=5, reduced=True, overwrite=True)
    assert load_network(weights, "eye") is not None


def test_unprefixed_retargeting_keys_load(weights: Path) -> None:
    path = weights / RETARGETING_CHECKPOINT
    data = read(path)
    torch.save({sub: {k.removeprefix("module."): v for k, v in sd.items()} for sub, sd in data.items()}, path)
    want = {k.removeprefix("module."): v for k, v in data["retarget_eye"].items()}
    assert_same_state(load_network(weights, "eye"), want)


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError) as info:
        load_network(missing, "lip")
    assert str(info.value) == (
        f"weights directory {missing} does not exist; get the weights with `python -m export download --to "
        f"{missing}` (or `python -m export fake-weights --to {missing}` for tests)"
    )


def test_missing_file(weights: Path) -> None:
    (weights / MOTION).unlink()
    with pytest.raises(CheckpointError) as info:
        load_all(weights)
    assert str(info.value).startswith(f"checkpoint {weights / MOTION} is missing; get the weights with `python -m")


def test_truncated_file(weights: Path) -> None:
    path = weights / MOTION
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as info:
        load_network(weights, "motion_extractor")
    assert str(info.value).startswith(f"checkpoint {path} is truncated or corrupt (RuntimeError); delete it")


def test_wrong_shape_names_the_tensor(weights: Path) -> None:
    path = weights / MOTION
    state = read(path)
    state["detector.fc_exp.weight"] = torch.zeros(60, 128)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_network(weights, "motion_extractor")
    assert str(info.value) == (
        f"checkpoint {path}: tensor 'detector.fc_exp.weight' has shape [60, 128], expected [63, 128]; "
        f"it does not match the reduced architecture (chosen by {ARCH_FILE})"
    )


def test_reduced_weights_without_arch_file(weights: Path) -> None:
    (weights / ARCH_FILE).unlink()
    with pytest.raises(CheckpointError) as info:
        load_network(weights, "appearance_feature_extractor")
    assert str(info.value) == (
        f"checkpoint {weights / CHECKPOINTS['appearance_feature_extractor']}: tensor 'first.conv.weight' has "
        f"shape [8, 3, 3, 3], expected [64, 3, 3, 3]; it does not match the official architecture; weights "
        f"written by `fake-weights --reduced` need their {ARCH_FILE}"
    )
    assert load_network(weights, "appearance_feature_extractor", REDUCED) is not None


def test_unexpected_and_missing_keys(weights: Path) -> None:
    path = weights / MOTION
    state = read(path)
    state["detector.fc_extra.weight"] = torch.zeros(1)
    del state["detector.norm.bias"]
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_network(weights, "motion_extractor")
    assert str(info.value) == (
        f"checkpoint {path} has 1 missing tensors (e.g. detector.norm.bias) and 1 unexpected tensors "
        f"(e.g. detector.fc_extra.weight); it does not match the reduced architecture (chosen by {ARCH_FILE})"
    )


def test_retargeting_file_without_sub_dict(weights: Path) -> None:
    path = weights / RETARGETING_CHECKPOINT
    torch.save({"retarget_shoulder": {}}, path)
    with pytest.raises(CheckpointError) as info:
        load_network(weights, "lip", OFFICIAL)
    assert str(info.value) == (
        f"checkpoint {path} has no 'retarget_mouth' state_dict (it holds ['retarget_shoulder']); "
        "it is not LivePortrait's stitching_retargeting_module.pth"
    )


def test_load_all_reads_each_checkpoint_file_once(reduced_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from export import checkpoints

    read_paths: list[str] = []
    load = torch.load
    monkeypatch.setattr(checkpoints.torch, "load", lambda path, **kw: read_paths.append(Path(path).name) or load(path, **kw))
    load_all(reduced_weights)
    assert sorted(read_paths) == sorted(Path(rel).name for rel in [*CHECKPOINTS.values(), RETARGETING_CHECKPOINT])


def test_an_unknown_network_name_is_refused_before_any_file_is_read(weights: Path) -> None:
    from export.networks import UnknownNetworkError

    with pytest.raises(UnknownNetworkError, match=r"^unknown network 'generator'; use one of appearance_feature_"):
        load_network(weights, "generator")
