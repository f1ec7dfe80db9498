"""Soak test of the live loop: `python -m bench.soak [--frames 10000] [--record]`.

The headless loop (run_headless: capture, processing and output threads, the virtual-camera sink's letterboxing,
optionally the recorder with its ffmpeg) runs for N delivered frames with the FakeProcessor, a synthetic 640x480
camera that never waits and a virtual camera device that discards what it gets. It prints the process's resident
memory, threads and open files before the loop starts, after the first report (warm-up: allocator pools, ffmpeg
started) and after the loop stopped: a leak shows as growth from warm-up to the end.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime.live_api import FakeProcessor
from realtime.loop import run_headless


class RacingCamera:
    """640x480 frames as fast as they are read, a bright column moving across them (the fake's "face")."""

    fps = 30.0  # what the recorder's clock and the virtual camera are told
    status = ""

    def __init__(self) -> None:
        self.n = 0
        self.frame = np.full((480, 640, 3), 40, np.uint8)

    def read(self) -> np.ndarray:
        self.n += 1
        frame = self.frame.copy()
        frame[:, self.n % 640] = 255
        return frame

    def close(self) -> None:
        pass


class NullDevice:
    """The part of pyvirtualcam.Camera the sink uses; frames go nowhere."""

    device = "null"

    def __init__(self, width: int, height: int, fps: float) -> None:
        self.width, self.height, self.fps = width, height, fps

    def send(self, frame: np.ndarray) -> None:
        pass

    def sleep_until_next_frame(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Sample:
    when: str
    camera_frames: int
    rss_mb: float
    threads: int
    open_files: int


def sample(when: str, camera_frames: int) -> Sample:
    """This process now: resident memory, OS threads (ffmpeg is a child process, not counted), open files."""
    import psutil

    me = psutil.Process()
    files = me.num_fds() if hasattr(me, "num_fds") else me.num_handles()
    return Sample(when, camera_frames, me.memory_info().rss / 2**20, me.num_threads(), files)


def soak(frames: int, record: bool) -> tuple[list[Sample], int]:
    """Run the headless loop until it delivered `frames` frames; (samples before, after warm-up and at the end,
    frames delivered)."""
    samples = [sample("start", 0)]
    processor = FakeProcessor()
    processor.set_source(np.random.default_rng(0).integers(0, 255, (512, 384, 3), dtype=np.uint8))
    camera = RacingCamera()

    def report(line: str) -> None:  # the first status line comes after a second of running
        if len(samples) == 1 and "latency" in line:
            samples.append(sample("after warm-up", camera.n))

    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        stats = run_headless(
            processor, camera, virtual_cam=True, frames=frames, record=Path(folder) / "soak.mp4" if record else None,
            vcam_backend=NullDevice, report=report, report_every_s=1.0,
        )
    samples.append(sample("end", camera.n))
    if stats.sink_error:
        raise RuntimeError(stats.sink_error)
    return samples, stats.delivered


def table(samples: list[Sample]) -> str:
    rows = ["| when | camera frames | RSS MB | threads | open files |", "|---|---:|---:|---:|---:|"]
    rows += [f"| {s.when} | {s.camera_frames} | {s.rss_mb:.1f} | {s.threads} | {s.open_files} |" for s in samples]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000, help="frames the loop delivers (default 10000)")
    parser.add_argument("--record", action="store_true", help="also record them (the recorder and its ffmpeg)")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be 1 or more, got {args.frames}")
    try:
        samples, delivered = soak(args.frames, args.record)
    except (RuntimeError, OSError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table(samples))
    print(f"{delivered} frames delivered; Python threads alive after stop: {threading.active_count()} (1: none leaked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
