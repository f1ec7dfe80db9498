"""The contract between the live app (loop, sinks, window) and the animation core.

The app only needs four calls on a processor, so the UI and the headless loop are written and tested against this
Protocol with `FakeProcessor`, and the real ONNX/TensorRT pipeline plugs in through a `ProcessorFactory`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from core.images import SourceError, check_image
from core.options import ProcessOptions
from engines.layout import DOWNLOAD_COMMAND
from engines.select import BACKENDS as BACKENDS  # re-exported: the UI offers these without importing engines/
from realtime.filters import MotionSmoother, ease_toward



@dataclass
class FrameResult:
    """What the processor made of one driving frame.

    output is the animated portrait (RGB uint8, the source's size) or None when there is nothing to show yet
    (no portrait chosen); face_box is (x1, y1, x2, y2) in driving-frame pixels.
    """

    output: np.ndarray | None
    face_box: tuple[int, int, int, int] | None = None
    face_found: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    status: str = ""


class FrameProcessor(Protocol):
    """The animation core as the live app sees it. Every method is called from the processing thread only."""

    #: human description of where it runs, e.g. "ONNX Runtime CPU (no GPU found)"
    backend: str

    def set_source(self, image_rgb: np.ndarray) -> None:
        """Prepare a new portrait (RGB uint8 HxWx3); raise SourceError with a user-facing message if unusable."""

    def set_options(self, options: ProcessOptions, smoothing: float, lock_scale: bool) -> None:
        """Apply options from the next frame on. smoothing in [0, 1] (0 = raw); lock_scale keeps the source's
        head scale so leaning toward the camera does not zoom the portrait."""

    def recalibrate(self) -> None:
        """Make the current driving frame the neutral reference of relative motion."""

    def process(self, frame_rgb: np.ndarray) -> FrameResult:
        """Animate the portrait with one driving frame (RGB uint8)."""

    def interrupt(self) -> None:
        """Abort the frame in flight from another thread (the loop is stopping); later frames may fail."""

    def close(self) -> None:
        """Release the model sessions; the loop calls it when the processor is replaced or the loop stops."""


@runtime_checkable
class PipelinedProcessor(FrameProcessor, Protocol):
    """A processor whose frame splits in two halves the loop runs on two threads, so the face tracking and
    motion of frame n+1 overlap the warp + decode of frame n (on a GPU: two CUDA streams working at once).
    process(frame) must equal render(track(frame)). `overlap` says whether overlapping pays: on a GPU it does; on a
    CPU the two halves only compete for the same cores, and the loop runs them one after the other."""

    overlap: bool

    def track(self, frame_rgb: np.ndarray) -> object:
        """First half: face, motion and driving keypoints; the result carries everything render() needs."""

    def render(self, tracked: object) -> FrameResult:
        """Second half: warp, decode and paste-back of a tracked frame."""


#: (models_dir or None, backend name) -> processor; raises ModelsMissingError or ModelLoadError (engines/base.py)
#: with a user-facing message
ProcessorFactory = Callable[[Path | None, str], FrameProcessor]


def load_error_message(exc: BaseException) -> str:
    """One user-facing line for a failed processor start, always ending with how to get the models."""
    text = str(exc).strip() or type(exc).__name__
    return text if DOWNLOAD_COMMAND in text else f"{text}. To get the models run: {DOWNLOAD_COMMAND}"


class FakeProcessor:
    """A cheap stand-in for the animation core: it slides the portrait with the driving frame's bright centroid.

    Used when no models are configured (the window still shows the camera and a moving portrait) and in tests,
    where it records every option it receives. `delay_s` imitates the network's cost.
    """

    backend = "demo (no models: the portrait follows the camera's brightness)"
    #: typical speed of the centroid offset, in fractions of the frame per second
    UNITS = {"t": 0.5}

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.source: np.ndarray | None = None
        self.options = ProcessOptions()
        self.smoothing = 0.0
        self.lock_scale = False
        self.sources_set = 0
        self.recalibrations = 0
        self.frames = 0
        self.closed = False
        self.interrupted = False
        self.reference: np.ndarray | None = None
        self.t = np.zeros(2)
        self.smoother = MotionSmoother(0.0, self.UNITS)
        self.last_time = time.monotonic()

    def set_source(self, image_rgb: np.ndarray) -> None:
        check_image(image_rgb, "the portrait")
        if float(image_rgb.std()) < 2.0:
            raise SourceError("no face found in the portrait: choose a photo with one clearly visible face")
        self.source = image_rgb.copy()
        self.sources_set += 1

    def set_options(self, options: ProcessOptions, smoothing: float, lock_scale: bool) -> None:
        self.options, self.smoothing, self.lock_scale = options, smoothing, lock_scale
        self.smoother = MotionSmoother(smoothing, self.UNITS)

    def recalibrate(self) -> None:
        self.reference = None
        self.recalibrations += 1

    def interrupt(self) -> None:
        self.interrupted = True

    def close(self) -> None:
        self.closed = True

    def process(self, frame_rgb: np.ndarray) -> FrameResult:
        start = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        self.frames += 1
        now = time.monotonic()
        dt, self.last_time = now - self.last_time, now
        h, w = frame_rgb.shape[:2]
        small = frame_rgb[::8, ::8].mean(axis=2)
        face_found = float(small.mean()) > 8.0
        motion_ms = (time.perf_counter() - start) * 1e3
        if face_found:
            centroid = _centroid(small)
            if self.reference is None:
                self.reference = centroid
            self.t = self.smoother({"t": centroid - self.reference}, now)["t"]
        else:
            self.t = ease_toward(self.t, np.zeros(2), dt)
        box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4) if face_found else None
        if self.source is None:
            return FrameResult(None, box, face_found, {"motion": motion_ms}, "choose a portrait to animate")
        sh, sw = self.source.shape[:2]
        output = np.roll(self.source, (int(self.t[0] * sh), int(self.t[1] * sw)), axis=(0, 1))
        timings = {"motion": motion_ms, "render": (time.perf_counter() - start) * 1e3 - motion_ms}
        return FrameResult(output, box, face_found, timings, "" if face_found else "no face in view")


def _centroid(gray: np.ndarray) -> np.ndarray:
    """Brightness-weighted (row, col) centre of a grey image, as fractions of its height and width."""
    weight = gray.astype(np.float64) + 1e-6
    rows = np.arange(gray.shape[0])[:, None] / gray.shape[0]
    cols = np.arange(gray.shape[1])[None, :] / gray.shape[1]
    total = weight.sum()
    return np.array([(weight * rows).sum() / total, (weight * cols).sum() / total])
