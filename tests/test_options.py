"""The animation options keep the LivePortraitProcess node's names, defaults and ranges."""
from __future__ import annotations

from dataclasses import asdict

import pytest

from core.options import NODE_OPTIONS, OPTION_RANGES, ProcessOptions

#: the node's ranges, as the issue lists them
NODE_RANGES = {
    "dsize": (64, 2048),
    "scale": (1.0, 4.0),
    "vx_ratio": (-1.0, 1.0),
    "vy_ratio": (-1.0, 1.0),
    "eyes_retargeting_multiplier": (0.01, 10.0),
    "lip_retargeting_multiplier": (0.01, 10.0),
}


def test_defaults_are_the_nodes() -> None:
    node = {
        "dsize": 512, "scale": 2.3, "vx_ratio": 0.0, "vy_ratio": -0.125, "lip_zero": True,
        "eye_retargeting": False, "eyes_retargeting_multiplier": 1.0, "lip_retargeting": False,
        "lip_retargeting_multiplier": 1.0, "stitching": True, "relative": True, "onnx_device": "CPU",
    }
    assert NODE_OPTIONS == tuple(node)
    # the official pipeline's extra options default to "no change"
    options = ProcessOptions()
    assert {k: v for k, v in asdict(options).items() if k != "edit"} == node | {
        "animation_region": "all", "driving_multiplier": 1.0}
    assert options.edit.is_noop


def test_the_official_pipeline_options_are_checked() -> None:
    assert OPTION_RANGES["driving_multiplier"] == (0.0, 2.0)
    ProcessOptions(animation_region="lip", driving_multiplier=0.0)
    with pytest.raises(ValueError, match=r"^animation_region must be one of all, exp, pose, lip, eyes, got 'mouth'$"):
        ProcessOptions(animation_region="mouth")
    with pytest.raises(ValueError, match=r"^driving_multiplier must be between 0 and 2, got 2.5$"):
        ProcessOptions(driving_multiplier=2.5)


@pytest.mark.parametrize("name", sorted(NODE_RANGES))
def test_ranges_are_enforced_at_both_ends(name: str) -> None:
    low, high = NODE_RANGES[name]
    assert OPTION_RANGES[name] == (low, high)
    ProcessOptions(**{name: low})
    ProcessOptions(**{name: high})
    step = 1 if name == "dsize" else 0.001
    for outside in (low - step, high + step):
        with pytest.raises(ValueError, match=f"^{name} must be between {low:g} and {high:g}, got"):
            ProcessOptions(**{name: outside})


def test_unknown_device_is_named() -> None:
    with pytest.raises(ValueError, match="onnx_device must be one of CPU, CUDA, got 'GPU'"):
        ProcessOptions(onnx_device="GPU")
