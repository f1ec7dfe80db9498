"""Per-stage cost of the animation core: `python main.py bench [--models DIR] [--frames N]` (the CLI owns
its options, so this module has no entry of its own and never imports main.py).

Frames are made the way process() makes them: the portrait is prepared once, then each driving frame is followed
(one detection, then landmark tracking), read for motion, animated relative to the first frame and pasted back.
One difference: each frame is cropped around its own landmarks, where process() uses one box for the whole clip.
"Network" time is the time spent inside the models' Runner.infer (the seven networks and the three face models);
the overhead is everything else: image conversion, crops, detection decoding, keypoint math and the paste-back.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from engines.base import Runner
from core.images import load_image
from core.motion import Motion
from core.options import ProcessOptions
from core.crop import driving_box
from core.animator import Animator, DrivingFrame
from render.offline import net_input, open_driving, track_clip
from core.templates import Template

REPO = Path(__file__).resolve().parents[1]
#: the shared media beside the repository ($LIVEPORTRAIT_SHARED overrides the shared folder, as in the tests)
MEDIA = Path(os.environ.get("LIVEPORTRAIT_SHARED", REPO.parent / "shared")) / "media"
DEFAULT_SOURCE = MEDIA / "portraits" / "s6.jpg"
DEFAULT_DRIVING = MEDIA / "driving" / "d10.mp4"
STAGES = ("detect", "landmarks", "motion", "stitching/retargeting", "warp+decode", "paste-back")
#: untimed frames first: the first inference of a session allocates its buffers
WARMUP = 1

T = TypeVar("T")


class BenchInputError(ValueError):
    """A benchmark input is missing or unusable; the message says which option fixes it."""


def media_default(given: Path | None, default: Path, option: str) -> Path:
    """`given`, or the shared media file when it exists; otherwise an error naming the option to pass."""
    if given is not None:
        return Path(given)
    if not default.is_file():
        raise BenchInputError(f"no {option} given and the shared media file {default} is absent; pass {option} FILE")
    return default


@dataclass
class FrameCost:
    """One animated frame: milliseconds per stage, end to end, and inside the networks."""

    stages: dict[str, float]
    total_ms: float
    network_ms: float


@dataclass
class PipelineBench:
    """The timed frames of one run, and what the table reports about them."""

    backend: str
    source: str
    driving: str
    prepare_ms: float
    frames: list[FrameCost]

    def stage(self, name: str) -> tuple[int, float]:
        """(frames in which the stage ran, its median ms over those frames)."""
        values = [f.stages[name] for f in self.frames if name in f.stages]
        return len(values), statistics.median(values) if values else 0.0

    @property
    def end_to_end_ms(self) -> float:
        return statistics.median(f.total_ms for f in self.frames)

    @property
    def fps(self) -> float:
        return 1e3 / self.end_to_end_ms

    @property
    def overhead_pct(self) -> float:
        """Share of the frame time spent outside the networks, over all timed frames."""
        total = sum(f.total_ms for f in self.frames)
        return 100.0 * (total - sum(f.network_ms for f in self.frames)) / total

    def table(self) -> str:
        n = len(self.frames)
        rows = ["| measure | frames | median |", "|---|---:|---:|"]
        for name in STAGES:
            runs, ms = self.stage(name)
            rows.append(f"| {name} (ms) | {runs}/{n} | {f'{ms:.1f}' if runs else '-'} |")
        rows += [
            f"| end-to-end (ms per frame) | {n}/{n} | {self.end_to_end_ms:.1f} |",
            f"| fps | {n}/{n} | {self.fps:.2f} |",
            f"| non-network overhead (% of frame time) | {n}/{n} | {self.overhead_pct:.1f} |",
        ]
        head = (
            f"backend {self.backend}; portrait {self.source} prepared once in {self.prepare_ms:.0f} ms; "
            f"driving {self.driving}, {n} timed frames after {WARMUP} warm-up (the face is detected in the "
            "first frame and tracked from then on)"
        )
        return "\n".join([head, "", *rows])


class NetworkClock:
    """Milliseconds spent inside the infer() of a set of runners since the last reset."""

    def __init__(self) -> None:
        self.ms = 0.0

    def reset(self) -> None:
        self.ms = 0.0

    def wrap(self, infer: Callable[..., dict]) -> Callable[..., dict]:
        def timed(*args: object, **kwargs: object) -> dict:
            start = time.perf_counter()
            try:
                return infer(*args, **kwargs)
            finally:
                self.ms += (time.perf_counter() - start) * 1e3

        return timed


@contextmanager
def timed_networks(runners: Iterable[Runner]) -> Iterator[NetworkClock]:
    """Time every runner's infer() (an instance attribute shadows the method; removing it restores the method)."""
    clock = NetworkClock()
    runners = list(runners)
    for runner in runners:
        runner.infer = clock.wrap(runner.infer)  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        for runner in runners:
            del runner.infer


def _looped(items: Callable[[], Iterable[T]]) -> Iterator[T]:
    """items() again and again: a short clip repeats without holding its frames in memory."""
    while True:
        yield from items()


def _driving_motions(animator: Animator, path: Path, count: int) -> Iterator[Motion]:
    """`count` driving motions (the clip repeats if short); a video's are computed lazily, frame by frame, so
    each frame's detect/landmarks/motion stages land in that frame's timings."""
    driving = open_driving(path)
    if isinstance(driving, Template):
        yield from islice(_looped(lambda: map(driving.motion, range(len(driving)))), count)
        return
    for frame, lmk in track_clip(animator, islice(_looped(driving.frames), count)):
        box = None if lmk is None else driving_box(lmk)
        yield animator.driving_motion(DrivingFrame(net_input(frame, box), lmk))


def measure(animator: Animator, source: Path, driving: Path, frames: int) -> PipelineBench:
    """Prepare the portrait once, then time WARMUP + `frames` driving frames end to end."""
    if frames < 1:
        raise BenchInputError(f"--frames must be at least 1, got {frames}")
    options = ProcessOptions()
    image = load_image(source)
    start = time.perf_counter()
    src = animator.prepare_source(image, options)
    prepare_ms = (time.perf_counter() - start) * 1e3
    costs: list[FrameCost] = []
    reference: Motion | None = None
    runners = animator.runners
    with timed_networks(runners) as clock:
        motions = _driving_motions(animator, driving, WARMUP + frames)
        while True:
            animator.timer.reset()
            clock.reset()
            start = time.perf_counter()
            motion = next(motions, None)
            if motion is None:
                break
            if reference is None:
                reference = motion
            animator.render(src, animator.keypoints(src, motion, reference, options))
            costs.append(FrameCost(dict(animator.timer.ms), (time.perf_counter() - start) * 1e3, clock.ms))
    return PipelineBench(
        animator.backend, f"{source.name} ({image.shape[1]}x{image.shape[0]})", driving.name, prepare_ms, costs[WARMUP:]
    )


def run_bench(animator: Animator, source: Path | None, driving: Path | None, frames: int) -> PipelineBench:
    """`python main.py bench`: measure and print the markdown table (shared media when no input is given)."""
    source = media_default(source, DEFAULT_SOURCE, "--source")
    driving = media_default(driving, DEFAULT_DRIVING, "--driving")
    result = measure(animator, source, driving, frames)
    print(result.table())
    return result
