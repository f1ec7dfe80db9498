"""The ComfyUI nodes: a loader that opens an exported models folder as a LIVEPORTRAITPIPE, LivePortraitProcess,
which hands IMAGE batches to the project's own render.offline.process() (the method is not implemented twice), and
the expression editor, which runs render.offline.edit_portrait() on each image of a batch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from engines.select import BACKENDS, choose_backend, fastest_cpu_backend
from engines.layout import DOWNLOAD_COMMAND, WEIGHT_FILES, ModelsMissingError, missing_models
from render import offline as render
from core.images import ImageInputError
from core.edit import EDIT_HELP, EDIT_RANGES, RATIO_CONTROLS, Edit
from core.options import DEVICES, NODE_OPTIONS, OPTION_RANGES, ProcessOptions
from core.animator import Animator
from engines.settings import resolve_models_dir

log = logging.getLogger(__name__)

CATEGORY = "LivePortrait"
PIPE_TYPE = "LIVEPORTRAITPIPE"
#: the loader's backend value that lets each LivePortraitProcess node's onnx_device pick "cpu" or "cuda"
FOLLOW_DEVICE = "onnx_device"
#: widget steps; vx/vy get 0.001 because ComfyUI rounds a FLOAT to its step, and a coarser one would turn the
#: -0.125 default into another value
NODE_STEPS = {
    "scale": 0.01,
    "vx_ratio": 0.001,
    "vy_ratio": 0.001,
    "eyes_retargeting_multiplier": 0.001,
    "lip_retargeting_multiplier": 0.001,
}
#: how far outside 0..1 an IMAGE may stray and still be clamped (a bicubic or Lanczos resize overshoots a little);
#: beyond it the batch is in another range (0..255 pixels, -1..1) and refused
IMAGE_SLACK = 0.5
BACKEND_TOOLTIP = "onnx_device: the LivePortraitProcess node's onnx_device (CPU or CUDA) decides; else a fixed backend"
ONNX_DEVICE_INPUT = (list(DEVICES), {"default": "CPU", "tooltip": "used when the loader's backend is onnx_device"})

#: opened Animators per (resolved models folder, backend name): sessions are opened once per ComfyUI process,
#: not once per run, and two loader nodes on the same folder share them
_ANIMATORS: dict[tuple[Path, str], Animator] = {}


class FrameSizeError(ValueError):
    """Animated full frames of different sizes cannot form one ComfyUI IMAGE batch."""


class PipelineTypeError(TypeError):
    """The pipeline input is not ours (another node pack also names its pipeline type LIVEPORTRAITPIPE)."""


def models_folder(weights_dir: str) -> Path:
    """The exported models folder the text names, or the configured one when it is empty; ModelsMissingError
    saying how to make it otherwise (an official weights folder gets the export command for that folder)."""
    if not weights_dir.strip():
        try:
            return resolve_models_dir(None)
        except ModelsMissingError as exc:
            raise ModelsMissingError(f"{exc}; in ComfyUI you can also type the folder into weights_dir") from None
    folder = Path(weights_dir.strip()).expanduser()
    if not folder.is_dir():
        raise ModelsMissingError(
            f"weights_dir {folder} is not a folder; give the models folder made by `python -m export onnx`, "
            "or leave weights_dir empty to use the configured one"
        )
    missing = missing_models(folder)
    if not missing:
        return folder
    if all((folder / rel).is_file() for rel in WEIGHT_FILES):
        out = folder.with_name(f"{folder.name}_onnx")
        raise ModelsMissingError(
            f"{folder} holds the official weights, which this runtime cannot run directly; export them once with: "
            f"python -m export onnx --weights {folder} --out {out} and set weights_dir to {out}"
        )
    raise ModelsMissingError(f"models folder {folder} lacks {', '.join(missing)}; create it with: {DOWNLOAD_COMMAND}")


@dataclass(frozen=True)
class LivePortraitPipe:
    """What flows along a LIVEPORTRAITPIPE link: where the models are and which backend runs them."""

    models_dir: Path
    #: "cpu", "cuda", "tensorrt", or FOLLOW_DEVICE (the process node's onnx_device decides)
    backend: str

    def animator(self, onnx_device: str) -> Animator:
        """The cached Animator for this folder and backend, opened on first use."""
        name = self.backend
        if name == FOLLOW_DEVICE:  # CPU: the fastest CPU backend, as the app's auto would pick without a GPU
            device = onnx_device.lower()
            name = fastest_cpu_backend(self.models_dir) if device == "cpu" else choose_backend(device, self.models_dir).name
        key = (self.models_dir.resolve(), name)
        if key not in _ANIMATORS:
            log.info("LivePortrait RT: opening %s with the %s backend", self.models_dir, name)
            _ANIMATORS[key] = Animator(self.models_dir, name)
        return _ANIMATORS[key]


def image_batch_to_uint8(images: Any, name: str) -> np.ndarray:
    """A ComfyUI IMAGE (B x H x W x C float tensor in [0, 1]) as B x H x W x C uint8. Values are rounded, not
    truncated, so an image that came from 8-bit pixels (LoadImage divides by 255) gets exactly those pixels back."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        got = f"a tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ImageInputError(f"{name} must be a ComfyUI IMAGE batch (B x H x W x 3 float tensor), got {got}")
    values = images.detach().to(torch.float32)
    if not torch.isfinite(values).all():
        raise ImageInputError(f"{name} contains NaN or infinite values; give finite pixel values in [0, 1]")
    low, high = float(values.min()), float(values.max())
    if low < -IMAGE_SLACK or high > 1 + IMAGE_SLACK:  # clamped, a 0..255 image would be white: "no face found"
        raise ImageInputError(
            f"{name} has values from {low:g} to {high:g}, but a ComfyUI IMAGE holds 0..1; scale it to 0..1 first "
            "(pixels in 0..255: divide by 255)"
        )
    return (values.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def uint8_to_image_batch(frames: np.ndarray) -> torch.Tensor:
    """B x H x W x 3 uint8 -> ComfyUI IMAGE: float32 in [0, 1]."""
    return torch.from_numpy(frames).to(torch.float32) / 255


def one_size_batch(frames: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """process()'s full frames as one array; a list (sources of different sizes) cannot be one IMAGE batch."""
    if isinstance(frames, np.ndarray):
        return frames
    sizes = sorted({f"{f.shape[1]}x{f.shape[0]}" for f in frames})
    raise FrameSizeError(
        f"the full frames have different sizes ({', '.join(sizes)}) and a ComfyUI IMAGE batch needs one size; "
        "resize the source images to one size or animate them one at a time"
    )


class LivePortraitRTLoader:
    """Loader node: an exported models folder (ONNX) and a backend -> LIVEPORTRAITPIPE."""

    DESCRIPTION = "Opens a LivePortrait RT models folder (exported ONNX) for LivePortraitProcess."
    RETURN_TYPES = (PIPE_TYPE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "weights_dir": (
                    "STRING",
                    {"default": "", "tooltip": "exported models folder; empty: $LIVEPORTRAIT_MODELS or the saved one"},
                ),
                "backend": (
                    [FOLLOW_DEVICE, *BACKENDS],
                    {"default": FOLLOW_DEVICE, "tooltip": BACKEND_TOOLTIP},
                ),
            }
        }

    def load(self, weights_dir: str, backend: str) -> tuple[LivePortraitPipe]:
        folder = models_folder(weights_dir)
        if backend != FOLLOW_DEVICE:
            choice = choose_backend(backend, folder)  # fails here, at load, when the backend cannot run
            log.info("LivePortrait RT: %s", choice.reason)
            backend = choice.name
        return (LivePortraitPipe(folder, backend),)


class LivePortraitProcess:
    """Animates every source image with every driving frame (sources one after another), like process()."""

    DESCRIPTION = "Animates each source portrait with every driving frame: 512x512 crops and source-size full frames."
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("cropped_images", "full_images")
    FUNCTION = "process"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        defaults = ProcessOptions()
        options: dict[str, tuple] = {}
        for name in NODE_OPTIONS:
            value = getattr(defaults, name)
            if isinstance(value, bool):
                options[name] = ("BOOLEAN", {"default": value})
            elif name in OPTION_RANGES:
                low, high = OPTION_RANGES[name]
                spec = {"default": value, "min": low, "max": high} | ({"step": NODE_STEPS[name]} if name in NODE_STEPS else {})
                options[name] = ("INT" if isinstance(value, int) else "FLOAT", spec)
        return {
            "required": {"pipeline": (PIPE_TYPE,), "source_image": ("IMAGE",), "driving_images": ("IMAGE",), **options},
            "optional": {
                "onnx_device": ONNX_DEVICE_INPUT,
                "source_is_video": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "the source batch is the frames of ONE video: frame i is animated "
                     "by driving frame i, stopping at the shorter (official video-to-video)"},
                ),
            },
        }

    def process(
        self,
        pipeline: LivePortraitPipe,
        source_image: Any,
        driving_images: Any,
        source_is_video: bool = False,
        **options: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """IMAGE batches in, (cropped_images, full_images) IMAGE batches out; options are ProcessOptions' fields."""
        settings = ProcessOptions(**options)
        crops, fulls = render.process(
            image_batch_to_uint8(source_image, "source_image"),
            image_batch_to_uint8(driving_images, "driving_images"),
            settings,
            our_pipeline(pipeline).animator(settings.onnx_device),
            comfy_progress(),
            source_is_video=source_is_video,
        )
        return uint8_to_image_batch(crops), uint8_to_image_batch(one_size_batch(fulls))


def our_pipeline(pipeline: Any) -> LivePortraitPipe:
    """The pipeline input, checked to be ours (another pack may also call its pipeline type LIVEPORTRAITPIPE)."""
    if not isinstance(pipeline, LivePortraitPipe):
        raise PipelineTypeError(
            f"pipeline is a {type(pipeline).__name__} from another LivePortrait node pack; "
            "connect the 'Load LivePortrait RT models' node instead"
        )
    return pipeline


#: a target-ratio widget at this value means "unset" (the portrait keeps its own opening): a FLOAT widget has no None
UNSET_RATIO = -1.0


class LivePortraitExpressionEditor:
    """Edits the expression and head pose of each image of a batch with the official demo's sliders."""

    DESCRIPTION = ("Edits each portrait of the batch (smile, wink, eyebrows, gaze, lips, head pose, eye/lip opening) "
                   "as the official LivePortrait demo's sliders do; full photos and 512x512 crops out.")
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("images", "cropped_images")
    FUNCTION = "edit"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        controls: dict[str, tuple] = {}
        for name, (low, high) in EDIT_RANGES.items():
            default = getattr(Edit(), name)
            tooltip = EDIT_HELP[name]
            if name in RATIO_CONTROLS:
                low, default, tooltip = UNSET_RATIO, UNSET_RATIO, f"{tooltip} ({UNSET_RATIO:g} = unset)"
            controls[name] = ("FLOAT", {"default": default, "min": low, "max": high, "step": 0.001, "tooltip": tooltip})
        return {
            "required": {"pipeline": (PIPE_TYPE,), "image": ("IMAGE",), **controls},
            "optional": {"onnx_device": ONNX_DEVICE_INPUT},
        }

    def edit(
        self, pipeline: LivePortraitPipe, image: Any, onnx_device: str = "CPU", **controls: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """IMAGE batch in, (edited full images, edited crops) out; every image gets the same controls."""
        for name in RATIO_CONTROLS:
            if controls.get(name) == UNSET_RATIO:
                controls[name] = None  # type: ignore[assignment]
        options = ProcessOptions(onnx_device=onnx_device, edit=Edit(**controls))
        animator = our_pipeline(pipeline).animator(onnx_device)
        progress = comfy_progress()
        images = image_batch_to_uint8(image, "image")
        crops, fulls = [], []
        for done, frame in enumerate(images, 1):
            crop, full = render.edit_portrait(animator, frame, options)
            crops.append(crop)
            fulls.append(full)
            if progress is not None:
                progress(done, len(images))
        return uint8_to_image_batch(np.stack(fulls)), uint8_to_image_batch(np.stack(crops))


def comfy_progress() -> Callable[[int, int], None] | None:
    """ComfyUI's progress bar and cancel button for process(), or None outside ComfyUI."""
    try:
        import comfy.model_management
        import comfy.utils
    except ImportError:
        return None
    bars: dict[int, Any] = {}

    def on_frame(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()  # the user pressed cancel
        bar = bars.setdefault(total, comfy.utils.ProgressBar(total))
        bar.update_absolute(done, total)

    return on_frame


NODE_CLASS_MAPPINGS = {
    "LivePortraitRTLoader": LivePortraitRTLoader,
    "LivePortraitProcess": LivePortraitProcess,
    "LivePortraitRTExpressionEditor": LivePortraitExpressionEditor,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LivePortraitRTLoader": "Load LivePortrait RT models",
    "LivePortraitProcess": "LivePortrait Process (RT)",
    "LivePortraitRTExpressionEditor": "LivePortrait Expression Editor (RT)",
}
