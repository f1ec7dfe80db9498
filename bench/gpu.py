"""GPU benchmark: per-engine milliseconds for TensorRT FP16, TensorRT FP32 and ONNX Runtime CUDA, and the live
app's end-to-end fps and latency, in one run.

`python -m bench.gpu --models DIR [--frames N] [--backends trt-fp16,trt-fp32,ort-cuda] [--source IMG] [--driving VIDEO]`

End to end is what the live app does per camera frame, through realtime.live.LiveProcessor on a real portrait
and real driving frames (decoded beforehand, so video decoding is not timed): detection, landmark tracking,
motion extraction, keypoint math, warp, decode and paste-back. "sequential" is process() frame after frame (its
latency is the frame's); "overlapped" runs track() of frame n+1 beside render() of frame n on two threads, as the
live loop does on GPU backends.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.pipeline import DEFAULT_DRIVING, DEFAULT_SOURCE, media_default
from engines.base import ModelLoadError, Runner
from engines.trt import NoGpuError, find_gpu
from engines.layout import NETWORK_ONNX
from realtime.live_api import FrameResult, PipelinedProcessor

BACKEND_NAMES = ("trt-fp16", "trt-fp32", "ort-cuda")
#: the app backend and precision each benchmark backend's end-to-end numbers come from
APP_BACKENDS = {"trt-fp16": ("tensorrt", "fp16"), "trt-fp32": ("tensorrt", "fp32"), "ort-cuda": ("cuda", "fp16")}
NETWORKS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
WARMUP = 10


def random_feeds(runner: Runner, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of the right shapes and dtypes; values in [0, 1) like images (speed does not depend on them)."""
    return {s.name: rng.random([d or 1 for d in s.shape]).astype(s.dtype) for s in runner.inputs}


def time_ms(call: Callable[[], Any], repeat: int) -> list[float]:
    for _ in range(WARMUP):
        call()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def open_runners(backend: str, models: Path, engines: Path) -> dict[str, Runner]:
    if backend == "ort-cuda":
        from engines.ort import OrtRunner

        runners: dict[str, Runner] = {n: OrtRunner(models / NETWORK_ONNX[n], device="cuda") for n in NETWORKS}
        if any(r.backend != "onnxruntime-cuda" for r in runners.values()):
            raise ModelLoadError("ONNX Runtime fell back to the CPU; install onnxruntime-gpu with its CUDA libraries")
        return runners
    from engines.trt_build import open_trt_runner

    precision = backend.split("-")[1]
    return {n: open_trt_runner(models / NETWORK_ONNX[n], engines, precision) for n in NETWORKS}


def load_frames(video: Path, count: int) -> list[np.ndarray]:
    """Up to `count` RGB frames of a video, decoded before any timing."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = []
    try:
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"no frames could be read from {video}; pass --driving with a video OpenCV can decode")
    return frames


def overlapped_fps(processor: PipelinedProcessor, frames: list[np.ndarray], count: int) -> float:
    """Frames per second with track() of frame n+1 running while render() of frame n runs on another thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-render") as render:
        pending: Future[FrameResult] | None = None
        start = time.perf_counter()
        for i in range(count):
            tracked = processor.track(frames[i % len(frames)])
            if pending is not None:
                pending.result()
            pending = render.submit(processor.render, tracked)
        if pending is not None:
            pending.result()
        return count / (time.perf_counter() - start)


def end_to_end(processor: PipelinedProcessor, portrait: np.ndarray, frames: list[np.ndarray], count: int) -> list[str]:
    """The live processor's sequential latency and fps, and its overlapped fps, over `count` frames."""
    processor.set_source(portrait)
    for i in range(WARMUP):
        processor.process(frames[i % len(frames)])
    latency = []
    for i in range(count):
        start = time.perf_counter()
        processor.process(frames[i % len(frames)])
        latency.append((time.perf_counter() - start) * 1e3)
    p50, p95 = statistics.median(latency), float(np.percentile(latency, 95))
    return [
        f"  end to end, sequential: {1e3 / statistics.mean(latency):6.1f} fps, latency p50 {p50:.2f} ms, p95 {p95:.2f} ms",
        f"  end to end, overlapped (track || render): {overlapped_fps(processor, frames, count):6.1f} fps",
    ]


def bench_backend(backend: str, models: Path, engines: Path, frames: int) -> list[str]:
    """Per-engine median milliseconds on random inputs of the right shapes."""
    rng = np.random.default_rng(0)
    runners = open_runners(backend, models, engines)
    try:
        lines = []
        for name, runner in runners.items():
            feeds = random_feeds(runner, rng)
            ms = statistics.median(time_ms(lambda: runner.infer(feeds), frames))
            lines.append(f"  {name:30s} {ms:8.2f} ms")
        return lines
    finally:
        for runner in runners.values():
            runner.close()


def bench_app(backend: str, models: Path, portrait: np.ndarray, driving: list[np.ndarray], frames: int) -> list[str]:
    """End-to-end numbers of the live app on `backend`'s app backend and precision."""
    from realtime.live import LiveProcessor
    from core.animator import Animator

    processor = LiveProcessor(Animator(models, *APP_BACKENDS[backend]))
    try:
        return [f"  app backend: {processor.backend}", *end_to_end(processor, portrait, driving, frames)]
    finally:
        processor.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="models folder written by `python -m export onnx`")
    parser.add_argument("--engines", type=Path, help="engine cache (default: <models>/engines)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--backends", default=",".join(BACKEND_NAMES), help="comma-separated subset of the default")
    parser.add_argument("--source", type=Path, help="portrait (default: a shared media portrait)")
    parser.add_argument("--driving", type=Path, help="driving video (default: a shared media video)")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKEND_NAMES))
    if unknown:
        print(f"error: unknown backend(s) {unknown}; choose from {', '.join(BACKEND_NAMES)}", file=sys.stderr)
        return 1
    try:
        gpu = find_gpu()
    except NoGpuError as exc:
        print(f"error: {exc}; this benchmark needs an NVIDIA GPU: run it on a GPU machine with requirements-gpu.txt "
              "installed", file=sys.stderr)
        return 1
    try:
        from core.images import load_image

        portrait = load_image(media_default(args.source, DEFAULT_SOURCE, "--source"))
        driving = load_frames(media_default(args.driving, DEFAULT_DRIVING, "--driving"), args.frames)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    engines = args.engines or args.models / "engines"
    print(f"{gpu.name} ({gpu.sm}, {gpu.memory_bytes / 2**30:.0f} GiB), {args.frames} frames per measurement")
    for backend in backends:
        print(f"{backend}:")
        for measure in (lambda: bench_backend(backend, args.models, engines, args.frames),
                        lambda: bench_app(backend, args.models, portrait, driving, args.frames)):
            try:
                print("\n".join(measure()))
            except (ModelLoadError, RuntimeError, OSError, ValueError) as exc:
                print(f"  skipped: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
