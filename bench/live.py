"""Live-loop benchmark: `python -m bench.live --models DIR [--seconds S] [--fake]`.

The live loop (capture, processing and output threads, drop-oldest queues) runs on a shared driving video played
like a webcam at 30 fps, with the real processor or, with --fake, the FakeProcessor (no models needed). After the
first frame is out (warm-up: sessions allocate on their first run) it measures for S seconds: delivered fps,
glass-to-glass latency (camera read returned -> frame handed to the sinks; camera exposure and display are not
in it), dropped frames and the median milliseconds of each stage.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.pipeline import DEFAULT_DRIVING, DEFAULT_SOURCE, STAGES, BenchInputError, media_default
from engines.select import BACKENDS
from realtime.camera import open_camera
from core.images import load_image
from realtime.live_api import FakeProcessor, FrameProcessor
from realtime.frames import LiveFrame
from realtime.loop import LiveLoop

CAMERA_FPS = 30.0
#: how long the first frame may take (model warm-up, portrait preparation) before the run is abandoned
WARMUP_TIMEOUT_S = 300.0


class TimingSink:
    """Keeps the latency and stage timings of every frame delivered while `recording` is set."""

    def __init__(self) -> None:
        self.recording = threading.Event()
        self.first = threading.Event()
        self.latencies: list[float] = []
        self.timings: list[dict[str, float]] = []

    def send(self, frame: LiveFrame) -> None:
        self.first.set()
        if self.recording.is_set():
            self.latencies.append(frame.latency_ms)
            self.timings.append({**frame.result.timings, "process": frame.process_ms})

    def close(self) -> None:
        pass


@dataclass
class LiveBench:
    """What one timed run of the live loop measured."""

    backend: str
    seconds: float
    captured: int
    latencies: list[float]
    dropped: int
    timings: list[dict[str, float]] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def table(self) -> str:
        n = len(self.latencies)
        rows = [
            "| measure | value |",
            "|---|---:|",
            f"| delivered fps (camera {CAMERA_FPS:g} fps) | {self.fps:.2f} |",
            f"| latency p50 (ms) | {self.percentile(50):.0f} |",
            f"| latency p95 (ms) | {self.percentile(95):.0f} |",
            f"| dropped frames | {self.dropped} of {self.captured} captured |",
        ]
        seen = {name for t in self.timings for name in t}
        for name in [*(s for s in STAGES if s in seen), *sorted(seen - set(STAGES))]:
            values = [t[name] for t in self.timings if name in t]
            rows.append(f"| {name} (median ms, {len(values)}/{n} frames) | {statistics.median(values):.1f} |")
        head = f"processor {self.backend}; {n} frames delivered in {self.seconds:.1f} s after warm-up"
        return "\n".join([head, "", *rows])


def run_live_bench(processor: FrameProcessor, driving: Path, portrait: np.ndarray, seconds: float) -> LiveBench:
    """Run the loop on `driving` at CAMERA_FPS and measure `seconds` after the first delivered frame."""
    if seconds <= 0:
        raise BenchInputError(f"--seconds must be > 0, got {seconds}")
    processor.set_source(portrait)
    camera = open_camera(driving)
    camera.fps = CAMERA_FPS  # the video file source paces its frames at this rate
    sink = TimingSink()
    loop = LiveLoop(processor, camera, [sink])
    loop.start()
    try:
        if not sink.first.wait(WARMUP_TIMEOUT_S):
            raise TimeoutError(f"no frame came out within {WARMUP_TIMEOUT_S:g} s; is the processor stuck?")
        before = loop.stats()
        sink.recording.set()
        start = time.monotonic()
        time.sleep(seconds)
        sink.recording.clear()
        elapsed = time.monotonic() - start
        after = loop.stats()
    finally:
        loop.stop()
    dropped = after.dropped_capture + after.dropped_output - before.dropped_capture - before.dropped_output
    captured = after.captured - before.captured
    return LiveBench(processor.backend, elapsed, captured, sink.latencies, dropped, sink.timings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="models folder (from `python -m export onnx`)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="where the networks run")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to measure after warm-up")
    parser.add_argument("--fake", action="store_true", help="use the FakeProcessor (no models): the loop's own cost")
    parser.add_argument("--source", type=Path, help="portrait (default: a shared media portrait)")
    parser.add_argument("--driving", type=Path, help="video played as the camera (default: a shared media video)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        portrait = load_image(media_default(args.source, DEFAULT_SOURCE, "--source"))
        driving = media_default(args.driving, DEFAULT_DRIVING, "--driving")
        if args.fake:
            processor = FakeProcessor()
        else:
            from realtime.live import make_processor

            processor = make_processor(args.models, args.backend)
        result = run_live_bench(processor, driving, portrait, args.seconds)
    except (RuntimeError, OSError, ValueError) as exc:  # every expected failure carries a one-line message
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
