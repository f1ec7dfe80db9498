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
from realtime.pipeline import Animator, DrivingFrame, SourcePortrait
from realtime.settings import resolve_models_dir

#: options that change the source crop, so the portrait must be prepared again when they change
CROP_OPTIONS = ("dsize", "scale", "vx_ratio", "vy_ratio")
#: typical speed (units per second) of each motion quantity, so one smoothing strength fits them all
MOTION_UNITS = {"R": 0.5, "exp": 0.05, "t": 0.05, "scale": 0.05}


def orthonormal(R: np.ndarray) -> np.ndarray:
    """The rotation nearest to R: filtering a rotation element by element leaves it slightly non-orthogonal."""
    u, _, vt = np.linalg.svd(R)
    return (u @ vt).astype(np.float32)


def _inside(point: np.ndarray, box: np.ndarray) -> bool:
    return bool(box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3])


class LiveProcessor:
    """Animates one portrait from a live driving stream (implements realtime.live_api.FrameProcessor)."""

    def __init__(self, animator: Animator, backend_note: str = "") -> None:
        self.animator = animator
        self.backend = f"{animator.backend}" + (f" ({backend_note})" if backend_note else "")
        self.options = ProcessOptions()
        self.lock_scale = False
        self.smoother = MotionSmoother(0.0, MOTION_UNITS)
        self.lmk203: np.ndarray | None = None
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
        """The face's 203 landmarks, or None when no face is in view.

        Detection runs on every frame, so a face that leaves is noticed at once; the landmarks themselves are
        tracked from the previous frame (steadier than re-fitting them to each detection box) and re-fitted
        from the detection whenever the tracked points drift off the detected face."""
        timer, faces = self.animator.timer, self.animator.faces
        with timer("detect"):
            found = faces.detector(frame)
        if not found:
            self.lmk203 = None
            return None
        with timer("landmarks"):
            tracked = None if self.lmk203 is None else faces.track(frame, self.lmk203)
            if tracked is None or not _inside(tracked.mean(axis=0), found[0].bbox):
                tracked = faces.describe(frame, found[0]).lmk203
        self.lmk203 = tracked
        return tracked

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
        found = lmk is not None
        if self.source is None:
            status = "choose a portrait to animate" + ("" if found else "; no face in view")
            return FrameResult(None, face_box, found, dict(self.animator.timer.ms), status)
        status = "" if found else "no face in view: holding the last pose"
        if self.motion is None or self.reference is None:
            return FrameResult(self.source.image, face_box, False, dict(self.animator.timer.ms), status)
        crop = self.animator.animate(self.source, self.motion, self.reference, self.options)
        output = self.animator.paste(self.source, crop)
        return FrameResult(output, face_box, found, dict(self.animator.timer.ms), status)

    def interrupt(self) -> None:
        self.animator.interrupt()

    def close(self) -> None:
        self.animator.close()


def make_processor(models_dir: Path | None, backend: str) -> LiveProcessor:
    """The ProcessorFactory of the app and `main.py live`: resolve the models folder, pick the backend, open it."""
    folder = resolve_models_dir(models_dir)
    choice = choose_backend(backend, folder)
    return LiveProcessor(Animator(folder, choice.name), choice.reason)
