"""The ComfyUI nodes without ComfyUI installed: the node interface field by field, loader errors, tensor
conversion, a 2 sources x 2 driving frames run on the reduced fake models checked against process(), and the
package imported the way ComfyUI loads a custom-node folder."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from comfyui_liveportrait_rt import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, check_project_packages, nodes
from comfyui_liveportrait_rt.nodes import (
    FrameSizeError,
    LivePortraitPipe,
    LivePortraitProcess,
    LivePortraitRTLoader,
    PipelineTypeError,
    image_batch_to_uint8,
    one_size_batch,
    uint8_to_image_batch,
)
from engines.select import BackendUnavailable, probe_ort_providers
from core.images import ImageInputError
from core.images import SourceError
from engines.layout import ModelsMissingError
from core.options import ProcessOptions
from render.offline import process

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "comfyui_liveportrait_rt"

#: the LivePortraitProcess interface: name -> (type, default, min, max, step); None where it has none
PROCESS_INPUTS = {
    "pipeline": ("LIVEPORTRAITPIPE", None, None, None, None),
    "source_image": ("IMAGE", None, None, None, None),
    "driving_images": ("IMAGE", None, None, None, None),
    "dsize": ("INT", 512, 64, 2048, None),
    "scale": ("FLOAT", 2.3, 1.0, 4.0, 0.01),
    "vx_ratio": ("FLOAT", 0.0, -1.0, 1.0, 0.001),
    "vy_ratio": ("FLOAT", -0.125, -1.0, 1.0, 0.001),
    "lip_zero": ("BOOLEAN", True, None, None, None),
    "eye_retargeting": ("BOOLEAN", False, None, None, None),
    "eyes_retargeting_multiplier": ("FLOAT", 1.0, 0.01, 10.0, 0.001),
    "lip_retargeting": ("BOOLEAN", False, None, None, None),
    "lip_retargeting_multiplier": ("FLOAT", 1.0, 0.01, 10.0, 0.001),
    "stitching": ("BOOLEAN", True, None, None, None),
    "relative": ("BOOLEAN", True, None, None, None),
}
NO_CUDA = "CUDAExecutionProvider" not in probe_ort_providers()


def _field(spec: tuple) -> tuple:
    options = spec[1] if len(spec) > 1 else {}
    return (spec[0], *(options.get(key) for key in ("default", "min", "max", "step")))


def test_process_node_inputs_match_the_interface_field_by_field() -> None:
    inputs = LivePortraitProcess.INPUT_TYPES()
    assert set(inputs) == {"required", "optional"}
    assert list(inputs["required"]) == list(PROCESS_INPUTS)
    for name, expected in PROCESS_INPUTS.items():
        assert _field(inputs["required"][name]) == expected, name
    assert inputs["required"]["pipeline"] == ("LIVEPORTRAITPIPE",)
    assert list(inputs["optional"]) == ["onnx_device", "source_is_video"]
    assert _field(inputs["optional"]["onnx_device"]) == (["CPU", "CUDA"], "CPU", None, None, None)
    assert _field(inputs["optional"]["source_is_video"]) == ("BOOLEAN", False, None, None, None)  # the seed's way


def test_node_outputs_category_and_mappings() -> None:
    assert LivePortraitProcess.RETURN_TYPES == ("IMAGE", "IMAGE")
    assert LivePortraitProcess.RETURN_NAMES == ("cropped_images", "full_images")
    assert LivePortraitProcess.FUNCTION == "process" and LivePortraitProcess.CATEGORY == "LivePortrait"
    assert LivePortraitRTLoader.RETURN_TYPES == ("LIVEPORTRAITPIPE",)
    assert LivePortraitRTLoader.FUNCTION == "load" and LivePortraitRTLoader.CATEGORY == "LivePortrait"
    loader_inputs = LivePortraitRTLoader.INPUT_TYPES()["required"]
    assert _field(loader_inputs["weights_dir"]) == ("STRING", "", None, None, None)
    backends = ["onnx_device", "auto", "cpu", "cuda", "tensorrt", "openvino", "openvino-bf16"]
    assert _field(loader_inputs["backend"]) == (backends, "onnx_device", None, None, None)
    assert NODE_CLASS_MAPPINGS == {
        "LivePortraitRTLoader": LivePortraitRTLoader,
        "LivePortraitProcess": LivePortraitProcess,
        "LivePortraitRTExpressionEditor": nodes.LivePortraitExpressionEditor,
    }
    assert NODE_DISPLAY_NAME_MAPPINGS["LivePortraitRTExpressionEditor"] == "LivePortrait Expression Editor (RT)"
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for cls in NODE_CLASS_MAPPINGS.values():  # ComfyUI calls FUNCTION with every input as a keyword argument
        inputs = cls.INPUT_TYPES()
        names = [*inputs["required"], *inputs.get("optional", {})]
        inspect.signature(getattr(cls(), cls.FUNCTION)).bind(**dict.fromkeys(names))


@pytest.mark.parametrize("name", [n for n, f in PROCESS_INPUTS.items() if f[0] in ("INT", "FLOAT")])
def test_widget_ranges_are_exactly_what_process_options_accepts(name: str) -> None:
    _, default, low, high, step = PROCESS_INPUTS[name]
    outside = step or 1
    ProcessOptions(**{name: low})
    ProcessOptions(**{name: high})
    for value in (low - outside, high + outside):
        with pytest.raises(ValueError, match=f"{name} must be between {low:g} and {high:g}"):
            ProcessOptions(**{name: value})


def test_images_are_rounded_to_uint8_and_come_back_as_float32() -> None:
    values = torch.tensor([0.0, 100.6 / 255, 127.4 / 255, 1.0, 1.02, -0.01]).reshape(1, 1, 6, 1).repeat(1, 1, 1, 3)
    pixels = image_batch_to_uint8(values, "source_image")
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 1, 6, 3)
    assert pixels[0, 0, :, 0].tolist() == [0, 101, 127, 255, 255, 0]
    every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    back = uint8_to_image_batch(every)
    assert back.dtype == torch.float32 and float(back.max()) == 1.0
    np.testing.assert_array_equal(image_batch_to_uint8(back, "x"), every)  # 8-bit pixels survive the round trip


def test_bad_image_inputs_are_named() -> None:
    batch = r"must be a ComfyUI IMAGE batch \(B x H x W x 3 float tensor\), got"
    with pytest.raises(ImageInputError, match=rf"^driving_images {batch} a tensor of shape \(64, 64, 3\)$"):
        image_batch_to_uint8(torch.zeros(64, 64, 3), "driving_images")
    with pytest.raises(ImageInputError, match=rf"^source_image {batch} ndarray$"):
        image_batch_to_uint8(np.zeros((1, 64, 64, 3)), "source_image")
    with pytest.raises(ImageInputError, match="source_image contains NaN or infinite values"):
        image_batch_to_uint8(torch.full((1, 64, 64, 3), float("nan")), "source_image")


def test_full_frames_of_different_sizes_are_explained() -> None:
    same = np.zeros((2, 40, 30, 3), np.uint8)
    assert one_size_batch(same) is same
    frames = [np.zeros((40, 30, 3), np.uint8), np.zeros((40, 50, 3), np.uint8)]
    with pytest.raises(FrameSizeError, match=r"sizes \(30x40, 50x40\) and a ComfyUI IMAGE batch needs one size"):
        one_size_batch(frames)


def test_loader_errors_say_how_to_get_a_models_folder(
    tmp_path: Path, reduced_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = LivePortraitRTLoader().load
    with pytest.raises(ModelsMissingError, match=f"weights_dir {tmp_path / 'nope'} is not a folder"):
        load(str(tmp_path / "nope"), "cpu")
    with pytest.raises(ModelsMissingError) as official:
        load(str(reduced_weights), "cpu")
    out = reduced_weights.with_name(f"{reduced_weights.name}_onnx")
    command = f"python -m export onnx --weights {reduced_weights} --out {out}"
    assert str(official.value) == (
        f"{reduced_weights} holds the official weights, which this runtime cannot run directly; "
        f"export them once with: {command} and set weights_dir to {out}"
    )
    with pytest.raises(ModelsMissingError, match=f"^models folder {tmp_path} lacks appearance_feature_extractor.onnx"):
        load(str(tmp_path), "cpu")
    monkeypatch.setenv("LIVEPORTRAIT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("LIVEPORTRAIT_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    hint = "; in ComfyUI you can also type the folder into weights_dir$"
    with pytest.raises(ModelsMissingError, match=f"^no models folder is configured; .*{hint}"):
        load("", "onnx_device")


def test_loader_uses_the_configured_folder_and_checks_the_backend(
    reduced_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVEPORTRAIT_MODELS", str(reduced_models))
    assert LivePortraitRTLoader().load("  ", "onnx_device") == (LivePortraitPipe(reduced_models, "onnx_device"),)
    assert LivePortraitRTLoader().load(str(reduced_models), "auto")[0].backend in ("cpu", "cuda", "tensorrt", "openvino")
    if NO_CUDA:
        with pytest.raises(BackendUnavailable, match="^ONNX Runtime CUDA was asked for, but .*; choose the cpu"):
            LivePortraitRTLoader().load(str(reduced_models), "cuda")
        with pytest.raises(BackendUnavailable, match="^ONNX Runtime CUDA was asked for"):
            LivePortraitPipe(reduced_models, "onnx_device").animator("CUDA")


def test_a_pipeline_from_another_node_pack_is_refused() -> None:
    message = "^pipeline is a dict from another LivePortrait node pack; connect the 'Load LivePortrait RT models' node"
    with pytest.raises(PipelineTypeError, match=message):
        LivePortraitProcess().process({}, torch.zeros(1, 64, 64, 3), torch.zeros(1, 64, 64, 3))


#: widget values the node is run with: none is the default, so a node that ignored its widgets would differ
WIDGETS = {
    "dsize": 512, "scale": 2.5, "vx_ratio": 0.02, "vy_ratio": -0.1, "lip_zero": False, "eye_retargeting": True,
    "eyes_retargeting_multiplier": 1.5, "lip_retargeting": False, "lip_retargeting_multiplier": 1.0,
    "stitching": False, "relative": True,
}


def fake_comfy(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[int, int]], dict[str, bool]]:
    """ComfyUI's progress bar and cancel check as modules; returns (progress updates seen, {"now": cancel})."""
    updates: list[tuple[int, int]] = []
    cancelled = {"now": False}

    class ProgressBar:
        def __init__(self, total: int) -> None:
            self.total = total

        def update_absolute(self, value: int, total: int) -> None:
            updates.append((value, total))

    def check() -> None:
        if cancelled["now"]:
            raise Interrupted("processing interrupted")

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    comfy.model_management = types.SimpleNamespace(throw_exception_if_processing_interrupted=check)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    monkeypatch.setitem(sys.modules, "comfy.model_management", comfy.model_management)
    return updates, cancelled


class Interrupted(Exception):
    """What ComfyUI's cancel check raises."""


@pytest.fixture(scope="module")
def batch_run(reduced_models: Path, load_portrait, first_frames) -> dict:
    """The node on 2 sources x 2 driving frames, as ComfyUI calls it (non-default widgets, ComfyUI's progress bar
    present), plus process() itself on the second source with the same options."""
    first, other = load_portrait("s0.jpg"), load_portrait("s5.jpg")
    second = cv2.resize(other, first.shape[1::-1], interpolation=cv2.INTER_AREA)
    driving = np.stack(first_frames[:2])
    sources = np.stack([first, second])
    required = LivePortraitProcess.INPUT_TYPES()["required"]
    assert set(WIDGETS) == {name for name, spec in required.items() if len(spec) > 1}
    (pipe,) = LivePortraitRTLoader().load(str(reduced_models), "onnx_device")
    with pytest.MonkeyPatch.context() as monkeypatch:
        updates, _ = fake_comfy(monkeypatch)
        crops, fulls = LivePortraitProcess().process(
            pipe, uint8_to_image_batch(sources), uint8_to_image_batch(driving), **WIDGETS
        )
    reference = process(sources[1:], driving, ProcessOptions(**WIDGETS), pipe.animator("CPU"))
    return {"pipe": pipe, "sources": sources, "crops": crops, "fulls": fulls, "reference": reference,
            "updates": updates}


def test_two_sources_times_two_frames_give_four_frames_in_range(batch_run: dict) -> None:
    crops, fulls = batch_run["crops"], batch_run["fulls"]
    h, w = batch_run["sources"].shape[1:3]
    assert tuple(crops.shape) == (4, 512, 512, 3) and tuple(fulls.shape) == (4, h, w, 3)
    for images in (crops, fulls):
        assert images.dtype == torch.float32 and float(images.min()) >= 0.0 and float(images.max()) <= 1.0
        assert float(images.std()) > 0.05  # real pictures, not a blank batch
    assert batch_run["updates"] == [(i, 4) for i in range(1, 5)]  # ComfyUI's progress bar moved with every frame


def test_node_frames_are_exactly_what_process_gives(batch_run: dict) -> None:
    ref_crops, ref_fulls = batch_run["reference"]
    assert ref_crops.shape == (2, 512, 512, 3)
    crops, fulls = (image_batch_to_uint8(batch_run[key], key) for key in ("crops", "fulls"))
    np.testing.assert_array_equal(crops[2:], ref_crops)  # the widgets' options, not the defaults
    np.testing.assert_array_equal(fulls[2:], ref_fulls)
    # sources one after another: the two portraits' frames differ, each source's first frame is its own
    assert not np.array_equal(crops[0], crops[2])
    first, second = (np.abs(fulls[2].astype(int) - source).mean() for source in batch_run["sources"])
    assert second < first


def test_a_portrait_without_a_face_is_a_clear_error(batch_run: dict) -> None:
    grey = torch.full((1, 256, 256, 3), 0.5)
    with pytest.raises(SourceError, match="^no face found in the portrait: choose a photo with one clearly visible"):
        LivePortraitProcess().process(batch_run["pipe"], grey, grey)


def test_animators_are_cached_per_folder_and_backend(batch_run: dict, reduced_models: Path) -> None:
    """onnx_device CPU runs the fastest CPU backend (OpenVINO on the CPU graphs), not plain ONNX Runtime."""
    (again,) = LivePortraitRTLoader().load(str(reduced_models), "openvino")
    assert again.animator("CUDA") is batch_run["pipe"].animator("CPU")  # a fixed backend ignores onnx_device
    (plain,) = LivePortraitRTLoader().load(str(reduced_models), "cpu")
    assert plain.animator("CPU") is not again.animator("CPU")


def test_foreign_package_of_the_same_name_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    check_project_packages()  # ours are loaded from this repository
    other = types.ModuleType("export")
    other.__file__ = str(tmp_path / "export" / "__init__.py")
    monkeypatch.setitem(sys.modules, "export", other)
    message = f"needs its own 'export' package from {REPO}, but 'export' is already loaded from {tmp_path}"
    with pytest.raises(ImportError, match=message):
        check_project_packages()


#: loads a custom-node folder the way ComfyUI's load_custom_node does, in a bare interpreter (-I: no cwd, no
#: PYTHONPATH on sys.path), and reports what it got
LOAD_LIKE_COMFYUI = """
import importlib.util, json, sys
path, name = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location(name, path + "/__init__.py")
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
import realtime
print(json.dumps({"nodes": sorted(module.NODE_CLASS_MAPPINGS), "realtime": realtime.__file__,
                  "comfy": importlib.util.find_spec("comfy") is not None}))
"""


@pytest.mark.parametrize("how", ["folder", "symlink"])
def test_package_imports_the_way_comfyui_loads_custom_nodes(tmp_path: Path, how: str) -> None:
    path, name = PACKAGE, PACKAGE.name  # the folder name, as older ComfyUI names the module
    if how == "symlink":
        path = tmp_path / "custom_nodes" / "LivePortrait-RT.v1"
        path.parent.mkdir()
        path.symlink_to(PACKAGE, target_is_directory=True)
        name = str(path).replace(".", "_x_")  # newer ComfyUI names the module after the whole path
    result = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_LIKE_COMFYUI, str(path), name],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded == {
        "nodes": ["LivePortraitProcess", "LivePortraitRTExpressionEditor", "LivePortraitRTLoader"],
        "realtime": str(REPO / "realtime" / "__init__.py"),
        "comfy": False,
    }


def test_inside_comfyui_progress_is_reported_and_cancel_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ComfyUI's modules present, each frame moves its progress bar and checks its cancel button."""
    updates, cancelled = fake_comfy(monkeypatch)
    on_frame = nodes.comfy_progress()
    on_frame(1, 6)
    on_frame(2, 6)
    assert updates == [(1, 6), (2, 6)]
    cancelled["now"] = True
    with pytest.raises(Interrupted):
        on_frame(3, 6)
    monkeypatch.delitem(sys.modules, "comfy")
    monkeypatch.setitem(sys.modules, "comfy", None)
    assert nodes.comfy_progress() is None  # outside ComfyUI
