"""Warp -> decode -> paste-back, and the driving crop, chained on the GPU for the TensorRT backend.

Each TensorRT runner's `enqueue` returns its outputs as DeviceArrays that the next runner takes as inputs, so a
frame crosses the bus only twice: the 512 crop and the pasted frame come down once, at the end. The per-portrait
constants (f_s, the source photo, the paste mask, its theta) go up once per portrait. Everything is queued on
one stream, so each step sees the previous one finished without any host synchronisation in between; the driving
crop and the motion extractor use the motion extractor's own stream, so the live loop's two threads overlap on the
GPU.

The chaining only needs objects with TrtRunner's enqueue/fetch, and an `Uploads` that puts host arrays on the
device: tests give it ONNX Runtime runners with host arrays standing in for device memory, so the numbers of this
path are checked against the CPU path on machines without a GPU.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol

import numpy as np

from engines.trt import CudaError, CudaRuntime, DeviceArray, gpu_memory_error
from engines.image_ops import CROP_SIZE, PASTE_CROP_SIZE, theta_for, write_image_op
from engines.trt_build import ensure_engine, open_trt_runner
from engines.trt_cache import default_engine_dir
from core.paste import output_to_original

if TYPE_CHECKING:
    from core.portrait import SourcePortrait

#: where the image-op graphs are written, inside the models folder (their engines go to the usual cache)
IMAGE_OPS_DIR = "image_ops"

log = logging.getLogger(__name__)


class Queued(Protocol):
    """What the renderer needs of a runner: TrtRunner's enqueue (device in, device out) and fetch (to host)."""

    def enqueue(self, feeds: Mapping[str, Any], stream: Any = None) -> Mapping[str, Any]: ...

    def fetch(self, names: Iterable[str] | None = None, stream: Any = None) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Uploads(Protocol):
    """Device copies of host arrays that live until `clear` (per-portrait constants)."""

    def upload(self, array: np.ndarray, stream: Any) -> Any: ...

    def clear(self) -> None: ...


class CudaUploads:
    """Uploads into cudaMalloc'ed buffers; `cuda` is engines.trt.CudaRuntime (or a test fake)."""

    def __init__(self, cuda: Any) -> None:
        self.cuda = cuda
        self._ptrs: list[int] = []

    def upload(self, array: np.ndarray, stream: Any) -> DeviceArray:
        array = np.ascontiguousarray(array)
        try:
            ptr = self.cuda.malloc(array.nbytes)
        except CudaError as exc:
            raise gpu_memory_error("the portrait's constants") from exc
        self._ptrs.append(ptr)
        self.cuda.copy_htod(ptr, array.ctypes.data, array.nbytes, stream)
        self.cuda.stream_sync(stream)  # the copy reads pageable host memory that may be freed after we return
        return DeviceArray(ptr, array.shape, array.dtype)

    def clear(self) -> None:
        for ptr in self._ptrs:
            self.cuda.free(ptr)
        self._ptrs = []


class DeviceRenderer:
    """The TensorRT frame path: `render` for the output, `crop_on_device` / `motion` for the driving side.

    `runners` holds the warping_module, spade_generator and motion_extractor runners; `open_op` opens an
    image-op graph (written on demand to `ops_dir`, one per image size). One paste graph and one crop graph are
    kept open at a time: a new source or camera size replaces them. `build_op`, when given, makes a graph's
    engine without opening it: `prepare` uses it so a portrait's paste-back engine is built while the portrait is
    prepared, not under the first frame that shows it.
    """

    def __init__(
        self,
        runners: Mapping[str, Queued],
        open_op: Callable[[Path], Queued],
        ops_dir: Path,
        uploads: Uploads,
        stream: Any = None,
        motion_stream: Any = None,
        *,
        build_op: Callable[[Path], Any] | None = None,
    ) -> None:
        self.warp = runners["warping_module"]
        self.decode = runners["spade_generator"]
        self.motion_net = runners["motion_extractor"]
        self.open_op = open_op
        self.build_op = build_op
        self.ops_dir = Path(ops_dir)
        self.uploads = uploads
        self.stream = stream
        # the driving side runs on the motion extractor's own stream: in the live loop it overlaps the render
        self.motion_stream = motion_stream
        self._ops: dict[str, tuple[tuple[int, int], Queued]] = {}
        self._source: SourcePortrait | None = None
        self._paste: Queued | None = None
        self._constants: dict[str, Any] = {}

    @classmethod
    def for_tensorrt(cls, runners: Mapping[str, Any], models_dir: Path, cuda_graph: bool = False) -> "DeviceRenderer":
        """The renderer over Networks' TrtRunners: image ops are FP32 engines in the models' engine cache (FP32:
        the blend and truncation must agree with the CPU to the level), built at trt_build.IMAGE_OP_LEVEL. A build
        is a warning the user sees: on a new camera size it happens on the tracking thread, and the picture waits."""
        engine_dir = default_engine_dir(Path(models_dir))

        def open_op(path: Path) -> Any:
            return open_trt_runner(path, engine_dir, "fp32", log.info, announce=log.warning, cuda_graph=cuda_graph)

        def build_op(path: Path) -> Path:
            return ensure_engine(path, engine_dir, "fp32", log.info, announce=log.warning)

        streams = runners["warping_module"].stream, runners["motion_extractor"].stream
        ops_dir = Path(models_dir) / IMAGE_OPS_DIR
        return cls(runners, open_op, ops_dir, CudaUploads(CudaRuntime()), *streams, build_op=build_op)

    def prepare(self, hw: tuple[int, int]) -> None:
        """Have the paste-back engine for pictures of hw pixels ready (built if need be) before a frame needs it."""
        if self.build_op is not None:
            self.build_op(write_image_op(self.ops_dir, "paste", *hw))

    def _op(self, kind: str, hw: tuple[int, int]) -> Queued:
        """The open crop or paste graph for images of size hw, replacing one for another size."""
        held = self._ops.pop(kind, None)
        if held is not None and held[0] == hw:
            self._ops[kind] = held
            return held[1]
        if held is not None:
            held[1].close()
        runner = self.open_op(write_image_op(self.ops_dir, kind, *hw))
        self._ops[kind] = (hw, runner)
        return runner

    def _load(self, src: "SourcePortrait") -> None:
        """Upload a portrait's constants (and open the paste graph for its size), replacing the previous ones."""
        hw = (int(src.image.shape[0]), int(src.image.shape[1]))
        self._paste = self._op("paste", hw)
        self._source = None
        self.uploads.clear()
        theta = theta_for(output_to_original(src.M_c2o, src.dsize), (PASTE_CROP_SIZE, PASTE_CROP_SIZE), hw)
        host = {"feature_3d": src.f_s, "image": src.image[None], "mask": src.mask[None], "theta": theta}
        self._constants = {name: self.uploads.upload(array, self.stream) for name, array in host.items()}
        self._source = src

    def render(self, src: "SourcePortrait", x_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(512x512 uint8 animated crop, pasted full-size frame) for driving keypoints x_d (21x3)."""
        if src is not self._source:
            self._load(src)
        c = self._constants
        kp = {"kp_driving": x_d[None].astype(np.float32), "kp_source": src.x_s[None].astype(np.float32)}
        warped = self.warp.enqueue({"feature_3d": c["feature_3d"], **kp}, self.stream)["out"]
        image = self.decode.enqueue({"feature": warped}, self.stream)["image"]
        self._paste.enqueue({"crop": image, "image": c["image"], "mask": c["mask"], "theta": c["theta"]}, self.stream)
        out = self._paste.fetch(["frame", "crop_u8"], self.stream)
        return out["crop_u8"][0], out["frame"][0]

    def crop_on_device(self, frame: np.ndarray, M_o2c: np.ndarray) -> Any:
        """The 1x3x256x256 network input cut from an RGB uint8 frame with M_o2c (frame -> 256 crop), on the device."""
        h, w = frame.shape[:2]
        op = self._op("crop", (h, w))
        feeds = {"image": frame[None], "theta": theta_for(M_o2c, (h, w), CROP_SIZE)}
        return op.enqueue(feeds, self.motion_stream)["crop"]

    def motion(self, frame: np.ndarray, M_o2c: np.ndarray) -> dict[str, np.ndarray]:
        """The motion extractor's outputs for the driving crop M_o2c of a frame; only they come back to the host."""
        self.motion_net.enqueue({"image": self.crop_on_device(frame, M_o2c)}, self.motion_stream)
        return self.motion_net.fetch(None, self.motion_stream)

    def close(self) -> None:
        """Close the image-op runners and free the uploads (the network runners belong to Networks)."""
        for _, runner in self._ops.values():
            runner.close()
        self._ops = {}
        self.uploads.clear()
        self._source = None
        self._paste = None
