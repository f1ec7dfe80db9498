"""GPU benchmark: per-network milliseconds for TensorRT FP16, TensorRT FP32 and ONNX Runtime CUDA, and the live
app's end-to-end fps and latency, in one run.

`python -m bench.gpu --models DIR [--frames N] [--backends trt-fp16,trt-fp32,ort-cuda] [--source IMG] [--driving VIDEO]`

Per network, on random inputs of the right shapes: "host to host" is one infer() (inputs copied up, outputs
copied back: the numpy callers' cost); "on the device" has the inputs already on the GPU and leaves the outputs
there (TensorRT: DeviceArray feeds; ONNX Runtime: I/O binding), which is what a network costs inside the live
path, where the engines are chained on the device. TensorRT is also timed with its launches replayed from CUDA
graphs (the `cuda_graph` engine option, off by default until these numbers say otherwise).

End to end is what the live app does per camera frame, through realtime.live.LiveProcessor on a real portrait
and real driving frames (decoded beforehand, so video decoding is not timed): detection, landmark tracking,
motion extraction, keypoint math, warp, decode and paste-back. "sequential" is process() frame after frame;
"overlapped" runs track() of frame n+1 beside render() of frame n on two threads, as the live loop does on GPU
backends; a frame's latency runs from the start of its track() to the end of its render(). GPU memory is what
the whole device has in use with the backend open, after its run, less what it had before.
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
from engines.layout import NETWORK_ONNX
from engines.trt import CudaRuntime, NoGpuError, TrtRunner, find_gpu
from realtime.live_api import PipelinedProcessor

BACKEND_NAMES = ("trt-fp16", "trt-fp32", "ort-cuda")
#: the app backend and precision each benchmark backend's end-to-end numbers come from
APP_BACKENDS = {"trt-fp16": ("tensorrt", "fp16"), "trt-fp32": ("tensorrt", "fp32"), "ort-cuda": ("cuda", "fp16")}
NETWORKS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
WARMUP = 10
MIB = 2**20


def graph_settings(backend: str) -> tuple[bool, ...]:
    """The cuda_graph values a backend is measured with: both for TensorRT, none to choose for ONNX Runtime."""
    return (False, True) if backend.startswith("trt") else (False,)


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


def open_runners(backend: str, models: Path, engines: Path, cuda_graph: bool = False) -> dict[str, Runner]:
    """The four big networks on a benchmark backend (OrtRunner refuses a CUDA session that fell back to the CPU)."""
    opened: dict[str, Runner] = {}
    try:
        for name in NETWORKS:
            if backend == "ort-cuda":
                from engines.ort import OrtRunner

                opened[name] = OrtRunner(models / NETWORK_ONNX[name], device="cuda")
            else:
                from engines.trt_build import open_trt_runner

                precision = backend.split("-")[1]
                opened[name] = open_trt_runner(models / NETWORK_ONNX[name], engines, precision, cuda_graph=cuda_graph)
    except BaseException:
        for runner in opened.values():
            runner.close()
        raise
    return opened


def device_call(runner: Runner, feeds: dict[str, np.ndarray], cuda: Any = None) -> tuple[Callable[[], Any], Callable[[], None]]:
    """(one run with the inputs already on the device, returning its outputs left there, waited for; the release
    of its device inputs). TensorRT: uploaded DeviceArrays, then enqueue and a stream wait with no copies. ONNX
    Runtime: an I/O binding on the session's device. `cuda` is CudaRuntime (tests: a fake)."""
    if isinstance(runner, TrtRunner):
        from core.device_render import CudaUploads

        uploads = CudaUploads(cuda if cuda is not None else CudaRuntime())
        on_device = {name: uploads.upload(value, runner.stream) for name, value in feeds.items()}

        def run_engine() -> dict[str, Any]:
            outputs = runner.enqueue(on_device)
            runner.fetch([])  # no outputs: only the wait for the stream
            return outputs

        return run_engine, uploads.clear
    import onnxruntime as ort

    session = runner.session
    device = "cuda" if runner.backend == "onnxruntime-cuda" else "cpu"
    binding = session.io_binding()
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[s.name], s.dtype), device, 0) for s in runner.inputs]
    for spec, value in zip(runner.inputs, values):
        binding.bind_ortvalue_input(spec.name, value)
    for spec in runner.outputs:
        binding.bind_output(spec.name, device)

    def run_session() -> list[Any]:
        session.run_with_iobinding(binding)  # returns once the device work is done
        return binding.get_outputs()

    return run_session, binding.clear_binding_inputs


def network_table(backend: str, models: Path, engines: Path, frames: int, cuda: Any = None) -> list[str]:
    """Median milliseconds per network: host to host, on the device, and (TensorRT) on the device with graphs."""
    rng = np.random.default_rng(0)
    columns = ["host to host", "on the device"] + (["device, CUDA graph"] if True in graph_settings(backend) else [])
    table: dict[str, list[float]] = {name: [] for name in NETWORKS}
    for cuda_graph in graph_settings(backend):
        runners = open_runners(backend, models, engines, cuda_graph)
        try:
            for name, runner in runners.items():
                feeds = random_feeds(runner, rng)
                if not cuda_graph:
                    table[name].append(statistics.median(time_ms(lambda: runner.infer(feeds), frames)))
                run, release = device_call(runner, feeds, cuda)
                try:
                    table[name].append(statistics.median(time_ms(run, frames)))
                finally:
                    release()
        finally:
            for runner in runners.values():
                runner.close()
    lines = [f"  {'per network, median ms':30s}" + "".join(f"{c:>20s}" for c in columns)]
    lines += [f"  {name:30s}" + "".join(f"{ms:20.2f}" for ms in row) for name, row in table.items()]
    lines.append(f"  {'sum':30s}" + "".join(f"{sum(col):20.2f}" for col in zip(*table.values())))
    return lines


def overlapped(processor: PipelinedProcessor, frames: list[np.ndarray], count: int) -> tuple[float, list[float]]:
    """(frames per second, per-frame latency ms) with track() of frame n+1 running while render() of frame n runs
    on another thread; a frame's latency is from the start of its track() to the end of its render()."""
    latency: list[float] = []

    def render(tracked: object, started: float) -> None:
        processor.render(tracked)
        latency.append((time.perf_counter() - started) * 1e3)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-render") as pool:
        pending: Future[None] | None = None
        start = time.perf_counter()
        for i in range(count):
            started = time.perf_counter()
            tracked = processor.track(frames[i % len(frames)])
            if pending is not None:
                pending.result()
            pending = pool.submit(render, tracked, started)
        if pending is not None:
            pending.result()
        return count / (time.perf_counter() - start), latency


def _latency(samples: list[float]) -> str:
    return f"latency p50 {statistics.median(samples):.2f} ms, p95 {float(np.percentile(samples, 95)):.2f} ms"


def end_to_end(processor: PipelinedProcessor, portrait: np.ndarray, frames: list[np.ndarray], count: int) -> list[str]:
    """The live processor's sequential and overlapped fps and latency over `count` frames."""
    processor.set_source(portrait)
    for i in range(WARMUP):
        processor.process(frames[i % len(frames)])
    latency = []
    for i in range(count):
        start = time.perf_counter()
        processor.process(frames[i % len(frames)])
        latency.append((time.perf_counter() - start) * 1e3)
    fps, overlapped_latency = overlapped(processor, frames, count)
    return [
        f"  end to end, sequential: {1e3 / statistics.mean(latency):6.1f} fps, {_latency(latency)}",
        f"  end to end, overlapped (track || render): {fps:6.1f} fps, {_latency(overlapped_latency)}",
    ]


class GpuMemory:
    """Device memory in use, relative to what was in use when the benchmark started (CUDA's own context included
    in the baseline: the first query creates it)."""

    def __init__(self, cuda: Any = None) -> None:
        self.cuda = cuda if cuda is not None else CudaRuntime()
        self.cuda.memory_used()
        self.baseline = self.cuda.memory_used()

    def line(self, what: str) -> str:
        return f"  GPU memory in use, {what}: {(self.cuda.memory_used() - self.baseline) / MIB:.0f} MiB"


def bench_app(
    backend: str, models: Path, portrait: np.ndarray, driving: list[np.ndarray], frames: int, memory: GpuMemory
) -> list[str]:
    """End-to-end numbers of the live app on `backend`'s app backend and precision, with and (TensorRT) without
    CUDA graphs; the GPU memory in use with the app open, after its run."""
    from core.animator import Animator
    from realtime.live import LiveProcessor

    lines = []
    for cuda_graph in graph_settings(backend):
        app_backend, precision = APP_BACKENDS[backend]
        processor = LiveProcessor(Animator(models, app_backend, precision, cuda_graph=cuda_graph))
        try:
            graphs = ", CUDA graphs" if cuda_graph else ""
            lines += [f"  app backend: {processor.backend}{graphs}", *end_to_end(processor, portrait, driving, frames)]
            lines.append(memory.line(f"app open{graphs}"))
        finally:
            processor.close()
    return lines


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
    memory = GpuMemory()
    print(f"{gpu.name} ({gpu.sm}, {gpu.memory_bytes / 2**30:.0f} GiB), {args.frames} frames per measurement, "
          f"portrait {portrait.shape[1]}x{portrait.shape[0]}, driving {driving[0].shape[1]}x{driving[0].shape[0]}")
    for backend in backends:
        print(f"{backend}:", flush=True)
        for measure in (lambda: network_table(backend, args.models, engines, args.frames),
                        lambda: bench_app(backend, args.models, portrait, driving, args.frames, memory)):
            try:
                print("\n".join(measure()), flush=True)
            except (ModelLoadError, RuntimeError, OSError, ValueError) as exc:
                print(f"  skipped: {exc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
