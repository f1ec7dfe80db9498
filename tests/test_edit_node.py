"""The ComfyUI expression editor node and the process node's source_is_video option, without ComfyUI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_liveportrait_rt.nodes import (
    LivePortraitExpressionEditor,
    LivePortraitRTLoader,
    uint8_to_image_batch,
)
from core.edit import EDIT_RANGES, Edit
from core.options import ProcessOptions
from render.offline import edit_portrait


def test_editor_inputs_are_every_control_with_the_official_ranges() -> None:
    inputs = LivePortraitExpressionEditor.INPUT_TYPES()
    required = inputs["required"]
    assert list(required) == ["pipeline", "image", *EDIT_RANGES] and list(inputs["optional"]) == ["onnx_device"]
    for name, (low, high) in EDIT_RANGES.items():
        kind, spec = required[name]
        if name.startswith("target_"):
            assert (kind, spec["default"], spec["min"], spec["max"]) == ("FLOAT", -1.0, -1.0, high)  # -1: unset
        else:
            assert (kind, spec["default"], spec["min"], spec["max"]) == ("FLOAT", getattr(Edit(), name), low, high)
    assert LivePortraitExpressionEditor.RETURN_TYPES == ("IMAGE", "IMAGE")
    assert LivePortraitExpressionEditor.FUNCTION == "edit"


def test_editor_edits_each_image_of_the_batch(reduced_models: Path, load_portrait, fingerprint_warp: None) -> None:
    """Each image of the batch is edited on its own (the crops are fingerprints of the warp's inputs)."""
    portrait = load_portrait("s0.jpg")
    batch = np.stack([portrait, portrait[:, ::-1]])
    (pipe,) = LivePortraitRTLoader().load(str(reduced_models), "onnx_device")
    widgets = {name: spec[1]["default"] for name, spec in LivePortraitExpressionEditor.INPUT_TYPES()["required"].items()
               if len(spec) > 1}
    widgets |= {"smile": 0.8, "head_roll": 5.0, "target_eye_ratio": 0.5}
    fulls, crops = LivePortraitExpressionEditor().edit(pipe, uint8_to_image_batch(batch), **widgets)
    assert tuple(fulls.shape) == (2, *portrait.shape) and tuple(crops.shape) == (2, 512, 512, 3)
    options = ProcessOptions(edit=Edit(smile=0.8, head_roll=5.0, target_eye_ratio=0.5))
    animator = pipe.animator("CPU")
    crop, full = edit_portrait(animator, batch[1], options)  # the second image: the batch is walked, not the first reused
    assert torch.equal(fulls[1], uint8_to_image_batch(full[None])[0])
    assert torch.equal(crops[1], uint8_to_image_batch(crop[None])[0])
    assert not torch.equal(fulls[0], fulls[1])
    with pytest.raises(ValueError, match=r"^smile must be between -0.3 and 1.3, got 5$"):
        LivePortraitExpressionEditor().edit(pipe, uint8_to_image_batch(batch), **(widgets | {"smile": 5}))
