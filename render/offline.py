"""Offline use of the core: `process()` (the LivePortraitProcess node's behaviour), driving inputs from videos,
image folders, single images or motion templates, and the `render` / `template` commands behind main.py.
"""
from __future__ import annotations

import itertools
import time
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from core.crop import crop_box, driving_box
from core.images import ImageInputError, SourceError, load_image, to_rgb_uint8
from core.motion import (
    SMOOTH_OBSERVATION_VARIANCE,
    ExpressionFriendly,
    KpInfo,
    Motion,
    image_reference,
    source_eye_target,
    video_parts,
)
from core.options import DRIVING_OPTIONS, ProcessOptions
from core.animator import NET_SIZE, Animator, DrivingFrame
from core.portrait import SourcePortrait
from render.outputs import (
    ImageFile, Interrupted, VideoFile, check_target, has_audio, left_as_it_was, plural, refuse_overlap,
)
from core.templates import Template, load_official_template, load_template, save_template, save_template_arrays

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_FPS = 25.0


class DrivingInputError(ValueError):
    """A driving input cannot be read; the message names the file and what would work."""


@dataclass
class DrivingClip:
    """Driving frames that can be read more than once (the clip-wide crop box needs two passes) without holding
    a whole video in memory."""

    frames: Callable[[], Iterator[np.ndarray]]
    fps: float
    #: how many frames, where known without reading them (None for a video)
    count: int | None = None


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def open_video(path: Path) -> DrivingClip:
    """A video file as a clip; an unreadable or empty video is a DrivingInputError."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    capture.release()
    if next(_video_frames(path), None) is None:
        raise DrivingInputError(f"{path} has no readable video frames; use an .mp4/.avi/.mov video, an image or a folder")
    return DrivingClip(lambda: _video_frames(path), fps if 0 < fps < 1000 else DEFAULT_FPS)


def open_images(paths: Sequence[Path]) -> DrivingClip:
    """Still images as a clip, read lazily (each checked and converted to RGB uint8)."""
    return DrivingClip(lambda: (load_image(p) for p in paths), DEFAULT_FPS, count=len(paths))


def open_driving(path: Path) -> DrivingClip | Template:
    """A driving input by path: a motion template (.npz), an image folder, one image, or a video."""
    path = Path(path)
    if not path.exists():
        raise DrivingInputError(f"driving input {path} does not exist")
    if path.suffix.lower() == ".npz":
        return load_template(path)
    if path.suffix.lower() == ".pkl":  # an official template, read without running anything in it
        return load_official_template(path)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DrivingInputError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return open_images(images)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return open_images([path])
    return open_video(path)


def frame_range(driving: DrivingClip | Template, start: int = 0, frames: int | None = None) -> DrivingClip | Template:
    """Driving frames start .. start+frames-1, as if the input had been cut first: the first kept frame is the
    reference of relative motion and a video's crop box is averaged over the kept frames only."""
    if start < 0 or (frames is not None and frames < 1):
        raise DrivingInputError(f"--start must be 0 or more and --frames 1 or more (got {start} and {frames})")
    if start == 0 and frames is None:
        return driving
    end = None if frames is None else start + frames
    if isinstance(driving, Template):
        kept: DrivingClip | Template = replace(driving, **{
            f.name: getattr(driving, f.name)[start:end] for f in fields(driving)
            if isinstance(getattr(driving, f.name), np.ndarray)
        })
        empty = len(kept) == 0  # type: ignore[arg-type]
    else:
        count = None if driving.count is None else len(range(driving.count)[start:end])
        kept = DrivingClip(lambda: itertools.islice(driving.frames(), start, end), driving.fps, count)
        empty = count == 0 or (count is None and next(kept.frames(), None) is None)
    if empty:
        raise DrivingInputError(f"--start {start} is past the last driving frame; use a smaller --start")
    return kept


def array_clip(frames: Sequence[np.ndarray] | np.ndarray) -> DrivingClip:
    """In-memory frames (a list or an NxHxWxC array) as a clip, each converted to RGB uint8."""
    checked = [to_rgb_uint8(np.asarray(f)) for f in frames]
    if not checked:
        raise DrivingInputError("no driving frames were given")
    return DrivingClip(lambda: iter(checked), DEFAULT_FPS)


def track_clip(animator: Animator, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(frame, its 203 landmarks or None), the official way for a video: detect until a face is found, then follow
    the points frame to frame from the previous ones (no re-detection). Lazy, frame by frame."""
    faces, timer = animator.faces, animator.timer
    lmk: np.ndarray | None = None
    for frame in frames:
        if lmk is None:
            with timer("detect"):
                face = faces.analyze(frame)
            lmk = None if face is None else face.lmk203
        else:
            with timer("landmarks"):
                lmk = faces.track(frame, lmk)
        yield frame, lmk


def net_input(frame: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """A driving frame's 256 network input: a square frame is only resized (the official default), any other is
    cropped to the clip's face box (or, when no face was ever seen, to its centred square)."""
    h, w = frame.shape[:2]
    if h == w:
        return cv2.resize(frame, (NET_SIZE, NET_SIZE))
    if box is None:
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        return cv2.resize(frame[y0 : y0 + side, x0 : x0 + side], (NET_SIZE, NET_SIZE))
    return crop_box(frame, box, np.zeros((0, 2))).img_256


def driving_frames(animator: Animator, clip: DrivingClip) -> Iterator[DrivingFrame]:
    """The clip made ready for motion: landmarks tracked through it and, for frames that are not square, ONE crop
    box averaged over the clip, exactly as the official driving crop does (a live stream uses a causal box)."""
    landmarks = [lmk for _, lmk in track_clip(animator, clip.frames())]
    boxes = [driving_box(lmk) for lmk in landmarks if lmk is not None]
    mean_box = np.mean(boxes, axis=0) if boxes else None
    for frame, lmk in zip(clip.frames(), landmarks):
        yield DrivingFrame(net_input(frame, mean_box), lmk)


def driving_motions(animator: Animator, driving: DrivingClip | Template) -> list[Motion]:
    """Every driving frame's motion (computed once, whatever the number of sources)."""
    if isinstance(driving, Template):
        return [driving.motion(i) for i in range(len(driving))]
    return [animator.driving_motion(frame) for frame in driving_frames(animator, driving)]


def animate_frames(
    animator: Animator,
    src: SourcePortrait,
    motions: list[Motion],
    options: ProcessOptions,
    driving_option: str = "pose-friendly",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(animated 512 crop, full frame) for each motion; relative motion is measured against the first one, or for a
    single driving image against the neutral expression (the official image rule). "expression-friendly" scales
    a driving video's relative motion by the official hull-size multiplier."""
    if driving_option not in DRIVING_OPTIONS:
        raise ValueError(f"driving_option must be one of {', '.join(DRIVING_OPTIONS)}, got {driving_option!r}")
    reference = motions[0] if len(motions) > 1 else image_reference(motions[0])
    friendly = None
    if driving_option == "expression-friendly" and options.relative and len(motions) > 1:
        friendly = ExpressionFriendly.from_first(src.x_s, animator.composed_kp(src, motions[0], reference, options))
    for motion in motions:
        yield animator.render(src, animator.keypoints(src, motion, reference, options, friendly))


@dataclass(frozen=True)
class SourceVideo:
    """How a SOURCE VIDEO is animated (the official options): its composed motion is Kalman-smoothed with this
    observation variance (larger is smoother; core.motion.kalman_smooth), and `eye_retargeting` holds its eyes at
    the first frame's opening (official flag_source_video_eye_retargeting)."""

    smooth_variance: float = SMOOTH_OBSERVATION_VARIANCE
    eye_retargeting: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.smooth_variance <= 1:
            raise ValueError(f"the source-video smoothing variance must be in (0, 1], got {self.smooth_variance!r}")


def source_video_motion(
    animator: Animator, frames: Iterable[np.ndarray], options: ProcessOptions
) -> tuple[list[KpInfo], np.ndarray]:
    """First pass over a source video: every frame's motion (no features: they are made again per frame in the
    second pass), and the first frame's eye-open ratios. A frame without a face is one clear error."""
    infos: list[KpInfo] = []
    first_eyes = np.zeros(2, np.float32)
    for i, frame in enumerate(frames):
        try:
            info, eyes = animator.source_motion(frame, options)
        except SourceError:
            raise SourceError(
                f"no face found in frame {i} of the source video: every frame needs the face visible "
                "(cut the clip where it is)"
            ) from None
        infos.append(info)
        if i == 0:
            first_eyes = eyes
    if not infos:
        raise SourceError("the source video has no frames")
    return infos, first_eyes


def animate_source_video(
    animator: Animator,
    frames: Iterable[np.ndarray],
    infos: list[KpInfo],
    first_eyes: np.ndarray,
    motions: list[Motion],
    options: ProcessOptions,
    video: SourceVideo = SourceVideo(),
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(animated crop, full frame) for source frame i with driving frame i (a driving image: that image for every
    frame), stopping at the shorter, by the official source-video rules (core.motion.video_parts)."""
    parts = video_parts(infos, motions, options.relative, options.animation_region, video.smooth_variance)
    eye_target = source_eye_target(first_eyes) if video.eye_retargeting else None
    for i, frame in zip(range(len(parts)), frames):
        src = animator.prepare_source(frame, options)
        drv = motions[i] if len(motions) > 1 else motions[0]
        yield animator.render(src, animator.video_keypoints(src, parts[i], drv, options, eye_target))


def process(
    source_images: Sequence[np.ndarray] | np.ndarray,
    driving_images: Sequence[np.ndarray] | np.ndarray | Template,
    options: ProcessOptions,
    animator: Animator,
    on_frame: Callable[[int, int], None] | None = None,
    source_is_video: bool = False,
) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
    """The LivePortraitProcess node: every source (RGB uint8) animated with every driving frame, sources one after
    another, outputs concatenated in that order. Returns (cropped_images Nx512x512x3, full_images NxHxWx3, or a
    list when the sources differ in size). `on_frame(done, total)` follows each output frame (a host's progress
    bar); an exception it raises (a host's cancel) stops the run. With `source_is_video` the sources are the
    frames of one video, animated frame by frame (animate_source_video, official defaults)."""
    options.validate()
    sources = list(source_images)
    if not sources:
        raise ImageInputError("no source image was given")
    driving = driving_images if isinstance(driving_images, Template) else array_clip(driving_images)
    motions = driving_motions(animator, driving)
    crops: list[np.ndarray] = []
    fulls: list[np.ndarray] = []
    if source_is_video:
        frames = [to_rgb_uint8(source) for source in sources]
        infos, first_eyes = source_video_motion(animator, frames, options)
        total = min(len(infos), len(motions)) if len(motions) > 1 else len(infos)
        batches = [animate_source_video(animator, frames, infos, first_eyes, motions, options)]
    else:
        total = len(sources) * len(motions)
        batches = (
            animate_frames(animator, animator.prepare_source(to_rgb_uint8(source), options), motions, options)
            for source in sources
        )
    for batch in batches:
        for crop, full in batch:
            crops.append(crop)
            fulls.append(full)
            if on_frame is not None:
                on_frame(len(crops), total)
    same_size = len({f.shape for f in fulls}) == 1
    return np.stack(crops), np.stack(fulls) if same_size else fulls


@dataclass
class RenderReport:
    frames: int
    seconds: float
    stage_ms: dict[str, float]
    sound: Path | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        sound = f", with the sound of {self.sound.name}" if self.sound else ""
        frames = f"{self.frames} frame{'' if self.frames == 1 else 's'}"
        return f"{frames} in {self.seconds:.1f} s ({self.fps:.2f} fps){sound}"


def render(
    animator: Animator,
    source_path: Path,
    driving_path: Path,
    out: Path,
    options: ProcessOptions,
    crop_out: Path | None = None,
    overwrite: bool = False,
    progress: Callable[[Iterable, int], Iterable] = lambda frames, total: frames,
    start_frame: int = 0,
    max_frames: int | None = None,
    driving_option: str = "pose-friendly",
    source_video: SourceVideo = SourceVideo(),
) -> RenderReport:
    """Animate one portrait with a driving input into a full-frame video (and optionally the crops). The files
    appear under their names only when complete: a failed or interrupted render leaves those names as they were.
    A source that is a video (not a picture) is animated frame by frame (official video-to-video, `source_video`)
    at its own frame rate, stopping at the shorter of the two."""
    refuse_overlap({"portrait": source_path, "driving input": driving_path}, {"output": out, "crop output": crop_out})
    driving = frame_range(open_driving(driving_path), start_frame, max_frames)
    source_clip = None if Path(source_path).suffix.lower() in IMAGE_SUFFIXES else open_video(Path(source_path))
    is_video = isinstance(driving, DrivingClip) and driving.count is None
    # its sound goes along, from the first animated frame on and cut to the animation's length
    sound = Path(driving_path) if is_video and has_audio(driving_path) else None
    timing = driving if source_clip is None else source_clip  # a source video keeps its own frame rate
    sinks = [_sink(path, timing, overwrite, sound, start_frame / driving.fps) for path in (out, crop_out) if path is not None]
    if source_clip is None:  # no face: fail before any slow work
        src = animator.prepare_source(load_image(source_path), options)
    else:
        infos, first_eyes = source_video_motion(animator, source_clip.frames(), options)
    animator.timer.reset()
    start = time.perf_counter()
    frames = 0
    motions: list[Motion] = []
    try:
        motions = driving_motions(animator, driving)
        if source_clip is None:
            animated, total = animate_frames(animator, src, motions, options, driving_option), len(motions)
        else:
            total = min(len(infos), len(motions)) if len(motions) > 1 else len(infos)
            animated = animate_source_video(
                animator, source_clip.frames(), infos, first_eyes, motions, options, source_video
            )
        for crop, full in progress(animated, total):
            sinks[0].write(full)
            if crop_out:
                sinks[1].write(crop)
            frames += 1
    except BaseException as exc:
        for sink in sinks:
            sink.discard()
        if isinstance(exc, KeyboardInterrupt):
            done = f"{frames} of {plural(len(motions), 'frame')}" if motions else "0 frames (reading the driving input)"
            raise Interrupted(f"interrupted after {done}; " + "; ".join(left_as_it_was(s.path) for s in sinks)) from None
        raise
    with ExitStack() as closing:  # every file is finished, even when one of them fails
        for sink in sinks:
            closing.callback(sink.close)
    return RenderReport(frames, time.perf_counter() - start, dict(animator.timer.ms), sound)


def _sink(
    path: Path, driving: DrivingClip | Template, overwrite: bool, sound: Path | None, sound_start: float = 0.0
) -> VideoFile | ImageFile:
    """A video file, or a picture (.png, .jpg, ...) where the driving input is one frame (an expression image)."""
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        return VideoFile(path, driving.fps, overwrite, sound, sound_start)
    count = len(driving) if isinstance(driving, Template) else driving.count
    if count != 1:
        frames = "a video" if count is None else f"{count} frames"
        raise DrivingInputError(f"{path} is a picture but the driving input is {frames}; name the output .mp4")
    return ImageFile(path, overwrite)


def edit_image(animator: Animator, source_path: Path, out: Path, options: ProcessOptions, overwrite: bool = False) -> None:
    """A still edit of one portrait (no driving input): options.edit applied as the official demo does, pasted
    back into the full photo and written as a picture."""
    refuse_overlap({"portrait": source_path}, {"output": out})
    if Path(out).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{out}: an edit is one picture; name it .png or .jpg")
    sink = ImageFile(out, overwrite)  # refuses an existing file before the slow part
    _, full = edit_portrait(animator, load_image(source_path), options)
    sink.write(full)


def edit_portrait(animator: Animator, image: np.ndarray, options: ProcessOptions) -> tuple[np.ndarray, np.ndarray]:
    """(edited 512 crop, edited full photo) of one portrait (RGB uint8), options.edit applied as the official demo
    does; the ComfyUI expression editor runs it per image of its batch."""
    src = animator.prepare_source(to_rgb_uint8(image), options)
    return animator.render(src, animator.edit_keypoints(src, options))


def make_template(animator: Animator, driving_path: Path, out: Path, overwrite: bool = False) -> int:
    """Extract a driving video's per-frame motion into a template file (the shared .npz format); returns frames."""
    refuse_overlap({"driving input": driving_path}, {"template": out})
    check_target(out, overwrite)  # before the slow part
    clip = open_driving(driving_path)
    if isinstance(clip, Template):
        raise DrivingInputError(f"{driving_path} is already a template; give a video, image or folder")
    motions = held_ratios(driving_motions(animator, clip))
    save_template(out, motions, clip.fps, overwrite=overwrite)
    return len(motions)


def convert_official_template(pkl: Path, out: Path, overwrite: bool = False) -> int:
    """An official LivePortrait .pkl template (restricted unpickling: no code in it runs) as our .npz; returns
    the frame count."""
    refuse_overlap({"official template": pkl}, {"template": out})
    check_target(out, overwrite)
    template = load_official_template(pkl)
    save_template_arrays(out, template, overwrite=overwrite)
    return len(template)


def held_ratios(motions: list[Motion]) -> list[Motion]:
    """Frames where no face was seen get the eye/lip ratios of the nearest earlier (else later) frame that had
    them, as the live path holds the last pose, so a template keeps ratios unless no frame ever had a face."""
    last = next((m for m in motions if m.eye_ratio is not None), None)
    if last is None:
        return motions
    held = []
    for motion in motions:
        if motion.eye_ratio is not None:
            last = motion
        held.append(replace(motion, eye_ratio=last.eye_ratio, lip_ratio=last.lip_ratio))
    return held
