"""The real FrameProcessor: the animation core driven frame by frame from a camera.

Per frame: follow the face (detect, then track the 203 landmarks, re-detecting regularly and whenever it is lost),
crop it with a causally smoothed box, read its motion, smooth pose and expression (One-Euro), and animate the
portrait relative to a neutral reference frame. While no face is seen the last pose eases back to neutral.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from core.crop import driving_box
from realtime.filters import BoxSmoother, MotionSmoother, ease_toward
from core.images import limit_size
from realtime.live_api import FrameResult
from core.motion import Motion
from core.options import ProcessOptions
from core.animator import Animator, open_animator
from core.images import check_image
from core.portrait import SourcePortrait

#: options that change the source crop, so the portrait must be prepared again when they change
CROP_OPTIONS = ("dsize", "scale", "vx_ratio", "vy_ratio")
#: longest side of a portrait in the live app (the virtual camera is 720p; offline renders keep the full size)
LIVE_MAX_DIM = 1920
#: typical speed (units per second) of each motion quantity, so one smoothing strength fits them all
MOTION_UNITS = {"R": 0.5, "exp": 0.05, "t": 0.05, "scale": 0.05}


def orthonormal(R: np.ndarray) -> np.ndarray:
    """The rotation nearest to R: filtering a rotation element by element leaves it slightly non-orthogonal."""
    u, _, vt = np.linalg.svd(R)
    return (u @ vt).astype(np.float32)


def motion_values(motion: Motion) -> dict[str, np.ndarray]:
    """The quantities that are filtered and eased, as arrays."""
    return {"R": motion.R, "exp": motion.exp, "t": motion.t, "scale": np.array([motion.scale])}


def with_values(motion: Motion, values: dict[str, np.ndarray]) -> Motion:
    """`motion` with filtered/eased quantities put back (R made a rotation again)."""
    return replace(
        motion,
        R=orthonormal(values["R"]),
        exp=values["exp"].astype(np.float32),
        t=values["t"].astype(np.float32),
        scale=float(values["scale"][0]),
    )


def _inside(point: np.ndarray, box: np.ndarray) -> bool:
    return bool(box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3])


@dataclass
class TrackedFrame:
    """A frame between the two halves: everything render() needs, frozen when it was tracked, so the portrait or
    the options may change meanwhile on the tracking thread."""

    source: SourcePortrait | None
    x_d: np.ndarray | None
    face_box: tuple[int, ...] | None
    found: bool
    status: str
    timings: dict[str, float]


class LiveProcessor:
    """Animates one portrait from a live driving stream (a realtime.live_api.PipelinedProcessor: the loop runs
    track() and render() on two threads)."""

    def __init__(self, animator: Animator, backend_note: str = "") -> None:
        self.animator = animator
        self.overlap = animator.backend != "onnxruntime-cpu"  # GPU work overlaps; CPU halves would fight for cores
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
        self.last_time = time.monotonic()

    def set_source(self, image_rgb: np.ndarray) -> None:
        """Prepare a portrait; a huge photo is first brought down to LIVE_MAX_DIM, since every live frame is pasted
        into it, scaled for the preview and letterboxed to 720p for the virtual camera."""
        check_image(image_rgb, "the portrait")
        image = limit_size(image_rgb, LIVE_MAX_DIM, division=1)
        self.source = self.animator.prepare_source(image, self.options)
        self.image = image

    def set_options(self, options: ProcessOptions, smoothing: float, lock_scale: bool) -> None:
        options.validate()
        if self.image is not None and any(getattr(options, k) != getattr(self.options, k) for k in CROP_OPTIONS):
            self.source = self.animator.prepare_source(self.image, options)  # first: if it fails, nothing changed
        self.options, self.lock_scale = options, lock_scale
        if smoothing != self.smoother.strength:
            self.smoother = MotionSmoother(smoothing, MOTION_UNITS)

    def recalibrate(self) -> None:
        """The next frame becomes neutral; the filters start afresh so no lag of the old pose leaks into it."""
        self.reference = None
        self.smoother.reset()
        self.box.reset()

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
        values = self.smoother(motion_values(motion), now)
        return with_values(motion, values)

    def _eased(self, dt: float) -> Motion | None:
        """The held pose, moved toward the neutral reference while no face is in view."""
        if self.motion is None or self.reference is None:
            return self.motion
        neutral = motion_values(self.reference)
        return with_values(self.motion, {k: ease_toward(v, neutral[k], dt) for k, v in motion_values(self.motion).items()})

    def track(self, frame_rgb: np.ndarray) -> TrackedFrame:
        """First half of a frame: follow the face, update the smoothed motion, compute x_d'."""
        timer = self.animator.timer
        timer.reset()
        now = time.monotonic()
        dt, self.last_time = now - self.last_time, now
        lmk = self._landmarks(frame_rgb)
        box = None
        if lmk is None:
            self.box.reset()
            self.smoother.reset()
            self.motion = self._eased(dt)
        else:
            box = self.box.update(driving_box(lmk))
            motion = self.animator.box_motion(frame_rgb, box, lmk)
            if self.reference is None:
                self.reference = motion
            if self.lock_scale:
                motion = replace(motion, scale=self.reference.scale)
            self.motion = self._smoothed(motion, now)
        found = lmk is not None
        face_box = None if box is None else tuple(int(v) for v in box)
        if self.source is None:
            status = "choose a portrait to animate" + ("" if found else "; no face in view")
            return TrackedFrame(None, None, face_box, found, status, dict(timer.ms))
        x_d = None
        if self.motion is not None and self.reference is not None:
            x_d = self.animator.keypoints(self.source, self.motion, self.reference, self.options)
        status = "" if found else "no face in view: holding the last pose"
        return TrackedFrame(self.source, x_d, face_box, found, status, dict(timer.ms))

    def render(self, tracked: TrackedFrame) -> FrameResult:
        """Second half: warp + decode + paste-back (the portrait still, until a face was ever seen)."""
        src, timer = tracked.source, self.animator.timer
        if src is None or tracked.x_d is None:
            output = None if src is None else src.image
            return FrameResult(output, tracked.face_box, tracked.found, tracked.timings, tracked.status)
        timer.reset()
        _, output = self.animator.render(src, tracked.x_d)
        return FrameResult(output, tracked.face_box, tracked.found, {**tracked.timings, **timer.ms}, tracked.status)

    def process(self, frame_rgb: np.ndarray) -> FrameResult:
        return self.render(self.track(frame_rgb))

    def interrupt(self) -> None:
        self.animator.interrupt()

    def close(self) -> None:
        self.animator.close()


def make_processor(models_dir: Path | None, backend: str) -> LiveProcessor:
    """The ProcessorFactory of the app and `main.py live`: resolve the models folder, pick the backend, open it."""
    return LiveProcessor(*open_animator(models_dir, backend))
