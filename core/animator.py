"""The animation core: a source portrait is prepared once, then every driving motion becomes an animated crop
(warp + decode) and a full frame (paste-back). The offline render, the live app and the ComfyUI node all use it.
"""
from __future__ import annotations

import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from engines import Runner, open_runners
from engines.layout import NETWORK_ONNX
from core.crop import CropInfo, box_o2c, crop_box, crop_source, transform_pts
from core.face import FaceModels, FaceResult, eye_ratio, lip_ratio
from core.images import SourceError, limit_size
from core.motion import (
    Composed,
    ExpressionFriendly,
    KpInfo,
    Motion,
    absolute_parts,
    apply_edit,
    compose_driving_kp,
    edited_kp,
    eye_input,
    kp_delta,
    kp_info_from_outputs,
    lip_zero_delta,
    ratio_deltas,
    relative_parts,
    transform_kp,
    with_multiplier,
)
from core.options import ProcessOptions
from core.paste import paste_back, prepare_paste_mask
from core.portrait import SourcePortrait

if TYPE_CHECKING:
    from core.device_render import DeviceRenderer

#: the official source pre-resize (spec 3.6); the paste-back still goes into the full-size original
SOURCE_MAX_DIM = 1280
NET_SIZE = 256


def to_net_input(img_256: np.ndarray) -> np.ndarray:
    """RGB uint8 256x256 -> 1x3x256x256 float32 in [0, 1] (no mean/std, spec 1)."""
    return np.ascontiguousarray(img_256.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255)


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """1x3xHxW float in [0, 1] -> HxWx3 uint8 with the official truncating cast (not rounding, spec 1.11)."""
    return (np.clip(image[0], 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0).copy()


class StageTimer(threading.local):
    """Milliseconds per named stage for the frame being made (stages may repeat; times add up). Thread-local: the
    live loop tracks one frame while it renders the previous one, each half timing its own stages."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def reset(self) -> None:
        self.ms = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - start) * 1e3


class Networks:
    """The seven LivePortrait networks of a models folder, opened once with one backend."""

    def __init__(self, models_dir: Path, backend: str = "cpu", precision: str = "fp16", cuda_graph: bool = False) -> None:
        paths = {name: Path(models_dir) / file for name, file in NETWORK_ONNX.items()}
        self.runners = open_runners(paths, backend, precision, cuda_graph)
        self.backend = self.runners["warping_module"].backend

    def features(self, img_256: np.ndarray) -> np.ndarray:
        """f_s, the appearance feature volume of a 256 crop."""
        return self.runners["appearance_feature_extractor"].infer({"source_image": to_net_input(img_256)})["feature_3d"]

    def motion(self, img_256: np.ndarray) -> KpInfo:
        """Pose, expression, translation, scale and canonical keypoints of a 256 crop."""
        return kp_info_from_outputs(self.runners["motion_extractor"].infer({"image": to_net_input(img_256)}))

    def warp_decode(self, f_s: np.ndarray, x_s: np.ndarray, x_d: np.ndarray) -> np.ndarray:
        """The animated 512x512 crop (uint8 RGB) for source features and source/driving keypoints."""
        warped = self.runners["warping_module"].infer(
            {"feature_3d": f_s, "kp_driving": x_d[None].astype(np.float32), "kp_source": x_s[None].astype(np.float32)}
        )["out"]
        return to_uint8_image(self.runners["spade_generator"].infer({"feature": warped})["image"])

    def mlp(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        """One retargeting MLP as a plain function (input array -> delta), as core.motion wants it."""
        runner = self.runners[name]
        return lambda x: runner.infer({"x": x.astype(np.float32)})["delta"]

    def close(self) -> None:
        """In reverse order: the generator queues its work on the warping module's stream, so it must wait for
        that stream before the warping module, its owner, destroys it."""
        for runner in reversed(self.runners.values()):
            runner.close()


@dataclass
class DrivingFrame:
    """One driving frame made ready for motion: the 256 crop and, when a face was seen, its 203 landmarks."""

    img_256: np.ndarray
    lmk203: np.ndarray | None


def _limit_transform(shape: tuple[int, ...], limited_shape: tuple[int, ...]) -> np.ndarray:
    """3x3 matrix from size-limited image pixels back to the original's (cv2.resize's pixel-centre mapping)."""
    sy, sx = shape[0] / limited_shape[0], shape[1] / limited_shape[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


class Animator:
    """Runs the method on one backend: prepare a source, read motion from driving frames, animate, paste back."""

    def __init__(self, models_dir: Path, backend: str = "cpu", precision: str = "fp16", cuda_graph: bool = False) -> None:
        """Open every model; `precision` (fp16/fp32) and `cuda_graph` (replay engine launches from captured CUDA
        graphs; off until measured on a GPU) matter for TensorRT only. If anything fails, whatever was already open
        is closed again (a failed switch of backend must not keep GPU memory)."""
        self.timer = StageTimer()
        self.renderer: DeviceRenderer | None = None
        with ExitStack() as opened:
            self.nets = Networks(models_dir, backend, precision, cuda_graph)
            opened.callback(self.nets.close)
            self.faces = FaceModels(models_dir, backend)
            opened.callback(self.faces.close)
            if self.backend == "tensorrt":  # warp -> decode -> paste-back stay on the GPU (needs onnx: imported here)
                from core.device_render import DeviceRenderer

                self.renderer = DeviceRenderer.for_tensorrt(self.nets.runners, Path(models_dir), cuda_graph)
            opened.pop_all()  # all open: the Animator owns them now

    @property
    def backend(self) -> str:
        return self.nets.backend

    def _source_crop(self, image: np.ndarray, options: ProcessOptions) -> tuple[np.ndarray, FaceResult, CropInfo, KpInfo]:
        """(size-limited image, face, crop, motion) of a portrait; SourceError when it has no face."""
        limited = limit_size(image, SOURCE_MAX_DIM, division=1)
        with self.timer("detect"):
            face = self.faces.analyze(limited)
        if face is None:
            raise SourceError("no face found in the portrait: choose a photo with one clearly visible, frontal face")
        crop = crop_source(limited, face.lmk106, options.dsize, options.scale, options.vx_ratio, options.vy_ratio)
        with self.timer("motion"):
            info = self.nets.motion(crop.img_256)
        return limited, face, crop, info

    def source_motion(self, image: np.ndarray, options: ProcessOptions) -> tuple[KpInfo, np.ndarray]:
        """A source-video frame's motion and eye-open ratios only: the first pass over a source video, which keeps
        no features (a clip's worth of feature volumes would not fit in memory)."""
        _, face, _, info = self._source_crop(image, options)
        return info, eye_ratio(face.lmk203)

    def prepare_source(self, image: np.ndarray, options: ProcessOptions) -> SourcePortrait:
        """Detect, crop and encode a portrait (RGB uint8). SourceError when it has no face."""
        limited, face, crop, info = self._source_crop(image, options)
        with self.timer("features"):
            f_s = self.nets.features(crop.img_256)
        x_s = info.x
        c_s_lip = float(lip_ratio(face.lmk203)[0])
        # the closing delta is computed once here; whether it applies is decided per frame by the options
        lip_close = lip_zero_delta(x_s, c_s_lip, self.nets.mlp("lip"), ProcessOptions())
        to_original = _limit_transform(image.shape, limited.shape)
        M_c2o = (to_original @ crop.M_c2o).astype(np.float32)
        if self.renderer is not None:  # its paste-back engine is built now, not under the first animated frame
            self.renderer.prepare(image.shape[:2])
        return SourcePortrait(
            image=image,
            crop=crop,
            M_c2o=M_c2o,
            dsize=options.dsize,
            info=info,
            x_s=x_s,
            f_s=f_s,
            c_s_eyes=eye_ratio(face.lmk203),
            c_s_lip=c_s_lip,
            lip_close=lip_close,
            mask=prepare_paste_mask(M_c2o, image.shape, options.dsize),
            face_box=transform_pts(face.bbox.reshape(2, 2), to_original).reshape(4),
        )

    def driving_motion(self, frame: DrivingFrame) -> Motion:
        """The motion of one prepared driving frame, with its eye/lip ratios when landmarks exist."""
        with self.timer("motion"):
            info = self.nets.motion(frame.img_256)
        if frame.lmk203 is None:
            return Motion.from_kp_info(info)
        return Motion.from_kp_info(info, eye_ratio(frame.lmk203), lip_ratio(frame.lmk203))

    def box_motion(self, frame: np.ndarray, box: np.ndarray, lmk203: np.ndarray) -> Motion:
        """The motion of the face inside a square box of a live driving frame, with its eye/lip ratios. On
        TensorRT the box is cut on the GPU straight into the motion extractor (one 256 sampling instead of the
        host path's 512 crop and resize)."""
        if self.renderer is None:
            return self.driving_motion(DrivingFrame(crop_box(frame, box, lmk203).img_256, lmk203))
        with self.timer("motion"):
            info = kp_info_from_outputs(self.renderer.motion(frame, box_o2c(box, NET_SIZE)))
        return Motion.from_kp_info(info, eye_ratio(lmk203), lip_ratio(lmk203))

    def composed_kp(self, src: SourcePortrait, drv: Motion, ref: Motion, options: ProcessOptions) -> np.ndarray:
        """x_d before stitching and retargeting: motion transfer (relative to `ref`, or absolute) without the edit,
        what the official expression-friendly rule measures its first frame on."""
        return transform_kp(src.info.kp, *self._parts(src, drv, ref, options))

    @staticmethod
    def _parts(src: SourcePortrait, drv: Motion, ref: Motion, options: ProcessOptions) -> Composed:
        region = options.animation_region
        return relative_parts(src.info, drv, ref, region) if options.relative else absolute_parts(src.info, drv, region)

    def keypoints(
        self,
        src: SourcePortrait,
        drv: Motion,
        ref: Motion,
        options: ProcessOptions,
        friendly: ExpressionFriendly | None = None,
    ) -> np.ndarray:
        """x_d': motion transfer (relative to `ref`, or absolute), the edit on top of the composed motion (its
        target ratios as retargeting deltas), then stitching / retargeting (Algorithm 1). `friendly` applies the
        official expression-friendly scaling to the driving motion (not to the edit)."""
        with self.timer("stitching/retargeting"):
            parts = self._parts(src, drv, ref, options)
            x_d = transform_kp(src.info.kp, *apply_edit(src.info, parts, options.edit))
            if friendly is not None:
                x_d = friendly.scaled(transform_kp(src.info.kp, *parts), x_d)
            return self._finish(src, x_d, options, drv, plain=self._plain(src, parts, options, friendly))

    @staticmethod
    def _plain(
        src: SourcePortrait, parts: Composed, options: ProcessOptions, friendly: ExpressionFriendly | None = None
    ) -> np.ndarray | None:
        """The unedited composed keypoints, where Algorithm 1 needs them to keep the edit: eye or lip retargeting
        with relative motion starts from x_s and would drop it (None everywhere else)."""
        if options.edit.is_noop or not options.relative or not (options.eye_retargeting or options.lip_retargeting):
            return None
        plain = transform_kp(src.info.kp, *parts)
        return plain if friendly is None else friendly.scaled(plain, plain)

    def edit_keypoints(self, src: SourcePortrait, options: ProcessOptions) -> np.ndarray:
        """x_d' of a still edit (no driving input): the official demo's edited keypoints, stitched."""
        with self.timer("stitching/retargeting"):
            plain = replace(options, eye_retargeting=False, lip_retargeting=False, lip_zero=False)
            return self._finish(src, edited_kp(src.info, options.edit), plain, None)

    def _finish(
        self, src: SourcePortrait, x_d: np.ndarray, options: ProcessOptions, drv: Motion | None,
        after: np.ndarray | None = None, plain: np.ndarray | None = None,
    ) -> np.ndarray:
        """The edit's target-ratio deltas, then Algorithm 1 (core.motion.compose_driving_kp); `after` (the
        source-video eye delta) is added after stitching and before the driving multiplier, as officially.
        `plain` (Animator._plain) turns the edit into a keypoint offset that Algorithm 1 keeps."""
        eye_mlp, lip_mlp = self.nets.mlp("eye"), self.nets.mlp("lip")
        extra = ratio_deltas(src.x_s, src.c_s_eyes, src.c_s_lip, options.edit, eye_mlp, lip_mlp)
        if extra is not None:
            x_d = x_d + extra
        x = compose_driving_kp(
            src.x_s,
            x_d,
            options if after is None else replace(options, driving_multiplier=1.0),
            stitching_mlp=self.nets.mlp("stitching"),
            eye_mlp=eye_mlp,
            lip_mlp=lip_mlp,
            c_s_eyes=src.c_s_eyes,
            c_s_lip=src.c_s_lip,
            c_d_eyes=None if drv is None else drv.eye_ratio,
            c_d_lip=None if drv is None or drv.lip_ratio is None else float(drv.lip_ratio[0]),
            lip_delta0=src.lip_close if options.lip_zero and options.relative else None,
            edit_offset=None if plain is None else x_d - plain,
        )
        return x if after is None else with_multiplier(src.x_s, x + after, options.driving_multiplier)

    def video_keypoints(
        self, src: SourcePortrait, parts: Composed, drv: Motion, options: ProcessOptions, eye_target: float | None
    ) -> np.ndarray:
        """x_d' of one source-video frame from its composed (R, exp, scale, t) (core.motion.video_parts), edited.
        `eye_target` (source-video eye retargeting, core.motion.source_eye_target) holds the eyes at that opening
        through an eye-MLP delta added after stitching, as officially (not with eye/lip retargeting on)."""
        with self.timer("stitching/retargeting"):
            x_d = transform_kp(src.info.kp, *apply_edit(src.info, parts, options.edit))
            eye_delta = None
            if eye_target is not None and not (options.eye_retargeting or options.lip_retargeting):
                eye_delta = kp_delta(self.nets.mlp("eye")(eye_input(src.x_s, src.c_s_eyes, eye_target)), "eye")
            return self._finish(src, x_d, options, drv, eye_delta, self._plain(src, parts, options))

    def render(self, src: SourcePortrait, x_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(animated 512x512 crop, pasted full-size frame) for the driving keypoints x_d'. On TensorRT the frame
        never leaves the GPU between the networks and the paste-back."""
        if self.renderer is not None:
            with self.timer("warp+decode+paste-back"):
                return self.renderer.render(src, x_d)
        with self.timer("warp+decode"):
            crop = self.nets.warp_decode(src.f_s, src.x_s, x_d)
        with self.timer("paste-back"):
            return crop, paste_back(crop, src.M_c2o, src.image, src.mask, src.dsize)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
        self.nets.close()
        self.faces.close()

    @property
    def runners(self) -> list[Runner]:
        """Every model runner: the seven networks and the three face models."""
        return [*self.nets.runners.values(), *self.faces.runners]

    def interrupt(self) -> None:
        """Abort the frame in flight (the app is closing)."""
        for runner in self.runners:
            runner.interrupt()


def open_animator(models_dir: Path | None, backend: str) -> tuple[Animator, str]:
    """The Animator of the user's models folder (resolved like every command does) on the backend chosen for
    `backend` ("auto" included), with the sentence saying why that backend."""
    from engines.select import choose_backend
    from engines.settings import resolve_models_dir

    folder = resolve_models_dir(models_dir)
    choice = choose_backend(backend, folder)
    return Animator(folder, choice.name), choice.reason
