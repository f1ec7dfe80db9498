"""The real FrameProcessor: the animation core driven frame by frame from a camera.

Per frame: follow the face (detect, then track the 203 landmarks, re-detecting regularly and whenever it is lost),
crop it with a causally smoothed box, read its motion, smooth pose and expression (One-Euro), and animate the
portrait relative to a neutral reference frame. While no face is seen the last pose eases back to neutral.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from engines.select import choose_backend
from realtime.crop import BoxSmoother, crop_box, driving_box
from realtime.filters import MotionSmoother, ease_toward
from realtime.live_api import FrameResult, check_image
from realtime.motion import Motion
from realtime.options import ProcessOptions
from realtime.pipeline import Animator, DrivingFrame, DrivingTracker, SourcePortrait
from realtime.settings import resolve_models_dir

#: options that change the source crop, so the portrait must be prepared again when they change
CROP_OPTIONS = ("dsize", "scale", "vx_ratio", "vy_ratio")
#: typical speed (units per second) of each motion quantity, so one smoothing strength fits them all
MOTION_UNITS = {"R": 0.5, "exp": 0.05, "t": 0.05, "scale": 0.05}
#: smallest face box side (pixels) that tracking may shrink to before the face counts as lost
MIN_FACE_SIDE = 24


def orthonormal(R: np.ndarray) -> np.ndarray:
    """The rotation nearest to R: filtering a rotation element by element leaves it slightly non-orthogonal."""
    u, _, vt = np.linalg.svd(R)
    return (u @ vt).astype(np.float32)


def _plausible(lmk: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Tracked landmarks that collapsed or drifted off the frame mean the face was lost."""
    lo, hi = lmk.min(axis=0), lmk.max(axis=0)
    h, w = shape[:2]
    inside = lo[0] > -w * 0.25 and lo[1] > -h * 0.25 and hi[0] < w * 1.25 and hi[1] < h * 1.25
    return inside and float((hi - lo).min()) >= MIN_FACE_SIDE


class LiveProcessor:
    """Animates one portrait from a live driving stream (implements realtime.live_api.FrameProcessor)."""

    def __init__(self, animator: Animator, backend_note: str = "", redetect_every: int = 15) -> None:
        self.animator = animator
        self.backend = f"{animator.backend}" + (f" ({backend_note})" if backend_note else "")
        self.redetect_every = redetect_every
        self.options = ProcessOptions()
        self.lock_scale = False
        self.smoother = MotionSmoother(0.0, MOTION_UNITS)
        self.tracker = DrivingTracker(animator.faces, animator.timer)
        self.box = BoxSmoother(alpha=0.5)
        self.image: np.ndarray | None = None
        self.source: SourcePortrait | None = None
        self.reference: Motion | None = None
        self.motion: Motion | None = None
        self.frames = 0
        self.last_time = time.monotonic()

    def set_source(self, image_rgb: np.ndarray) -> None:
        check_image(image_rgb, "the portrait")
        self.source = self.animator.prepare_source(image_rgb, self.options)
        self.image = image_rgb

    def set_options(self, options: ProcessOptions, smoothing: float, lock_scale: bool) -> None:
        options.validate()
        recrop = any(getattr(options, k) != getattr(self.options, k) for k in CROP_OPTIONS)
        self.options, self.lock_scale = options, lock_scale
        if smoothing != self.smoother.strength:
            self.smoother = MotionSmoother(smoothing, MOTION_UNITS)
        if recrop and self.image is not None:
            self.source = self.animator.prepare_source(self.image, options)

    def recalibrate(self) -> None:
        self.reference = None

    def _landmarks(self, frame: np.ndarray) -> np.ndarray | None:
        if self.frames % self.redetect_every == 0:
            self.tracker.lose()  # a regular fresh detection catches a face that left while tracking went on
        lmk, _ = self.tracker.landmarks(frame)
        if lmk is not None and not _plausible(lmk, frame.shape):
            self.tracker.lose()
            lmk, _ = self.tracker.landmarks(frame)
        return lmk

    def _smoothed(self, motion: Motion, now: float) -> Motion:
        values = self.smoother({"R": motion.R, "exp": motion.exp, "t": motion.t, "scale": np.array([motion.scale])}, now)
        return replace(
            motion,
            R=orthonormal(values["R"]),
            exp=values["exp"].astype(np.float32),
            t=values["t"].astype(np.float32),
            scale=float(values["scale"][0]),
        )

    def _eased(self, dt: float) -> Motion | None:
        """The held pose, moved toward the neutral reference while no face is in view."""
        if self.motion is None or self.reference is None:
            return self.motion
        ref, cur = self.reference, self.motion
        return replace(
            cur,
            R=orthonormal(ease_toward(cur.R, ref.R, dt)),
            exp=ease_toward(cur.exp, ref.exp, dt).astype(np.float32),
            t=ease_toward(cur.t, ref.t, dt).astype(np.float32),
            scale=float(ease_toward(np.array(cur.scale), np.array(ref.scale), dt)),
        )

    def process(self, frame_rgb: np.ndarray) -> FrameResult:
        self.animator.timer.reset()
        now = time.monotonic()
        dt, self.last_time = now - self.last_time, now
        lmk = self._landmarks(frame_rgb)
        self.frames += 1
        box = None
        if lmk is None:
            self.box.reset()
            self.smoother.reset()
            self.motion = self._eased(dt)
        else:
            box = self.box.update(driving_box(lmk))
            frame = DrivingFrame(crop_box(frame_rgb, box, lmk).img_256, lmk, box)
            motion = self.animator.driving_motion(frame)
            if self.reference is None:
                self.reference = motion
            if self.lock_scale:
                motion = replace(motion, scale=self.reference.scale)
            self.motion = self._smoothed(motion, now)
        face_box = None if box is None else tuple(int(v) for v in box)
        status = "" if lmk is not None else "no face in view: holding the last pose"
        if self.source is None:
            return FrameResult(None, face_box, lmk is not None, dict(self.animator.timer.ms), "choose a portrait to animate")
        if self.motion is None or self.reference is None:
            return FrameResult(self.source.image, face_box, False, dict(self.animator.timer.ms), status)
        crop = self.animator.animate(self.source, self.motion, self.reference, self.options)
        output = self.animator.paste(self.source, crop)
        return FrameResult(output, face_box, lmk is not None, dict(self.animator.timer.ms), status)

    def close(self) -> None:
        self.animator.close()


def make_processor(models_dir: Path | None, backend: str) -> LiveProcessor:
    """The ProcessorFactory of the app and `main.py live`: resolve the models folder, pick the backend, open it."""
    folder = resolve_models_dir(models_dir)
    choice = choose_backend(backend, folder)
    return LiveProcessor(Animator(folder, choice.name), choice.reason)
