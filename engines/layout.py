"""Where every file lives: the official release layout of the weights, and our exported models folder."""
from __future__ import annotations

from pathlib import Path

#: official checkpoints, relative to the weights directory (the KwaiVGI/LivePortrait release layout)
CHECKPOINTS = {
    "appearance_feature_extractor": "liveportrait/base_models/appearance_feature_extractor.pth",
    "motion_extractor": "liveportrait/base_models/motion_extractor.pth",
    "warping_module": "liveportrait/base_models/warping_module.pth",
    "spade_generator": "liveportrait/base_models/spade_generator.pth",
}
RETARGETING_CHECKPOINT = "liveportrait/retargeting_models/stitching_retargeting_module.pth"
#: sub-dicts of the retargeting checkpoint -> our network names
RETARGETING_KEYS = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}

#: the three face models, relative to the weights directory
FACE_MODELS = {
    "det_10g": "insightface/models/buffalo_l/det_10g.onnx",
    "2d106det": "insightface/models/buffalo_l/2d106det.onnx",
    "landmark": "liveportrait/landmark.onnx",
}

#: the static input shape each face model is exported with (the release files leave batch and, for det_10g, the
#: image size dynamic; TensorRT engines are static): det_10g runs on core.face's 512 letterbox, the landmark
#: models on their fixed 192 and 224 crops
FACE_INPUT_SHAPES = {"det_10g": (1, 3, 512, 512), "2d106det": (1, 3, 192, 192), "landmark": (1, 3, 224, 224)}

#: written only by `fake-weights --reduced`: names the reduced-width architecture; absent means official
ARCH_FILE = "liveportrait/arch.json"

#: every file of the official release that the app needs, relative to the weights directory
WEIGHT_FILES = [*CHECKPOINTS.values(), RETARGETING_CHECKPOINT, *FACE_MODELS.values()]

#: the exported models folder (`python -m export onnx --out DIR`) holds one file per network, plus the face
#: models with static input shapes, so the runtime needs that one folder only
NETWORK_ONNX = {
    "appearance_feature_extractor": "appearance_feature_extractor.onnx",
    "motion_extractor": "motion_extractor.onnx",
    "warping_module": "warping_module.onnx",
    "spade_generator": "spade_generator.onnx",
    "stitching": "stitching.onnx",
    "lip": "lip.onnx",
    "eye": "eye.onnx",
}
FACE_ONNX = {name: Path(rel).name for name, rel in FACE_MODELS.items()}
MODEL_FILES = {**NETWORK_ONNX, **FACE_ONNX}

#: the CPU graphs of the two heavy networks, written beside the native files by `python -m export onnx`: the same
#: networks with Winograd 3x3 convolutions (export/winograd.py; 2.25x to 4x fewer multiplications) and, for W,
#: its 7x7x7 mask convolution in the Fourier domain (export/fft_conv.py; 10x fewer) and gathers in place of the
#: 5-D grid samples that OpenVINO cannot read. The CPU backends read them in place of the native file; the GPU
#: backends never do.
CPU_ONNX = {
    NETWORK_ONNX["warping_module"]: "warping_module_cpu.onnx",
    NETWORK_ONNX["spade_generator"]: "spade_generator_cpu.onnx",
}


def cpu_graph(path: Path) -> Path | None:
    """Where the CPU graph of a models-folder file would be (None for a network that has none)."""
    name = CPU_ONNX.get(Path(path).name)
    return Path(path).with_name(name) if name else None


def cpu_model_file(path: Path) -> Path:
    """The file a CPU backend reads: the CPU graph when the folder has it (an older export may not), else `path`."""
    graph = cpu_graph(path)
    return graph if graph is not None and graph.is_file() else Path(path)


def missing_models(models_dir: Path) -> list[str]:
    """File names of the models folder that are not there (empty when the folder is complete)."""
    return [name for name in MODEL_FILES.values() if not (Path(models_dir) / name).is_file()]


#: how a user gets the models; every "models missing" message shows it
DOWNLOAD_COMMAND = "python -m export download --to weights && python -m export onnx --weights weights --out models"


class ModelsMissingError(RuntimeError):
    """No models folder is configured or it is incomplete; the message includes DOWNLOAD_COMMAND."""
