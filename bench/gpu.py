"""GPU benchmark: per-engine milliseconds, end-to-end fps and latency for TensorRT FP16, TensorRT FP32 and
ONNX Runtime CUDA, in one run.

`python -m bench.gpu --models DIR [--frames N] [--backends trt-fp16,trt-fp32,ort-cuda]`

One "frame" is the per-frame work of the live app: motion extractor on the driving crop, warping module with the
source feature volume (computed once) and keypoints, generator, image back to the host. Keypoints are taken
straight from the motion extractor's `kp` output: the host-side math is microseconds and is not what is measured.
TensorRT keeps the warp -> decode hand-over on the GPU; "pipelined" overlaps the motion extractor of frame n+1
with warp + decode of frame n on two CUDA streams.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from engines.base import ModelLoadError, Runner
from engines.trt import CudaRuntime, DeviceArray, TrtRunner, TwoStreamPipeline, gpu_info
from export.layout import NETWORK_ONNX

BACKEND_NAMES = ("trt-fp16", "trt-fp32", "ort-cuda")
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
    from export.trt_build import open_trt_runner

    precision = backend.split("-")[1]
    return {n: open_trt_runner(models / NETWORK_ONNX[n], engines, precision) for n in NETWORKS}


def frame_functions(runners: dict[str, Runner], rng: np.random.Generator) -> tuple[Callable[[], Any], ...]:
    """(one frame end to end, extract(frame, stream), render(motion, stream)) over the same inputs."""
    motion, warp, decode = runners["motion_extractor"], runners["warping_module"], runners["spade_generator"]
    appearance = runners["appearance_feature_extractor"]
    source = random_feeds(appearance, rng)
    feature_3d: Any
    if isinstance(appearance, TrtRunner):  # stays on the GPU: computed once per source, read every frame
        feature_3d = next(iter(appearance.enqueue(source).values()))
        appearance.fetch([])  # fetch nothing: only wait until it is computed
    else:
        feature_3d = next(iter(appearance.infer(source).values()))
    kp_source = motion.infer(random_feeds(motion, rng))["kp"].reshape(1, -1, 3)
    driving = random_feeds(motion, rng)
    names = [s.name for s in warp.inputs]  # feature_3d, kp_driving, kp_source in graph order

    def warp_feeds(kp: np.ndarray) -> dict[str, Any]:
        return {names[0]: feature_3d, names[1]: kp.reshape(1, -1, 3), names[2]: kp_source}

    def one_frame() -> np.ndarray:
        kp = motion.infer(driving)["kp"]
        if isinstance(warp, TrtRunner) and isinstance(decode, TrtRunner):
            warped = warp.enqueue(warp_feeds(kp))
            decode.enqueue({decode.inputs[0].name: warped[warp.outputs[0].name]})
            return next(iter(decode.fetch().values()))
        warped_host = warp.infer(warp_feeds(kp))[warp.outputs[0].name]
        return next(iter(decode.infer({decode.inputs[0].name: warped_host}).values()))

    def extract(_: int, stream: Any) -> np.ndarray:
        assert isinstance(motion, TrtRunner)
        motion.enqueue(driving, stream)
        return motion.fetch(["kp"], stream)["kp"]

    def render(kp: np.ndarray, stream: Any) -> Callable[[], np.ndarray]:
        assert isinstance(warp, TrtRunner) and isinstance(decode, TrtRunner)
        warped: DeviceArray = warp.enqueue(warp_feeds(kp), stream)[warp.outputs[0].name]
        decode.enqueue({decode.inputs[0].name: warped}, stream)
        return lambda: next(iter(decode.fetch(None, stream).values()))

    return one_frame, extract, render


def bench_backend(backend: str, models: Path, engines: Path, frames: int) -> list[str]:
    rng = np.random.default_rng(0)
    runners = open_runners(backend, models, engines)
    try:
        lines = []
        for name, runner in runners.items():
            feeds = random_feeds(runner, rng)
            ms = statistics.median(time_ms(lambda: runner.infer(feeds), frames))
            lines.append(f"  {name:30s} {ms:8.2f} ms")
        one_frame, extract, render = frame_functions(runners, rng)
        latency = time_ms(one_frame, frames)
        p50, p95 = statistics.median(latency), float(np.percentile(latency, 95))
        lines.append(f"  end to end: {1e3 / statistics.mean(latency):6.1f} fps, latency p50 {p50:.2f} ms, p95 {p95:.2f} ms")
        if backend.startswith("trt"):
            pipeline = TwoStreamPipeline(CudaRuntime())
            try:
                list(pipeline.run(range(WARMUP), extract, render))
                start = time.perf_counter()
                list(pipeline.run(range(frames), extract, render))
                lines.append(f"  pipelined (2 streams): {frames / (time.perf_counter() - start):6.1f} fps")
            finally:
                pipeline.close()
        return lines
    finally:
        for runner in runners.values():
            runner.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="models folder written by `python -m export onnx`")
    parser.add_argument("--engines", type=Path, help="engine cache (default: <models>/engines)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--backends", default=",".join(BACKEND_NAMES), help="comma-separated subset of the default")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKEND_NAMES))
    if unknown:
        print(f"error: unknown backend(s) {unknown}; choose from {', '.join(BACKEND_NAMES)}", file=sys.stderr)
        return 1
    gpu = gpu_info()
    if gpu is None:
        print("error: no NVIDIA GPU found (or no driver / cuda-python); this benchmark needs one: "
              "run it on a GPU machine with requirements-gpu.txt installed", file=sys.stderr)
        return 1
    engines = args.engines or args.models / "engines"
    print(f"{gpu.name} ({gpu.sm}, {gpu.memory_bytes / 2**30:.0f} GiB), {args.frames} frames per measurement")
    for backend in backends:
        print(f"{backend}:")
        try:
            print("\n".join(bench_backend(backend, args.models, engines, args.frames)))
        except (ModelLoadError, RuntimeError, OSError) as exc:
            print(f"  skipped: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
