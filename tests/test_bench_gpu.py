"""bench.gpu's measurements without a GPU: the device-only call of each backend (fake CUDA for TensorRT, ONNX Runtime
CPU for the I/O binding), CUDA graphs measured both ways, overlapped latency, GPU memory arithmetic."""
from __future__ import annotations

import re
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench import gpu
from engines.trt import host_view
from tests.fake_trt import FakeCuda, fake_runner


def test_tensorrt_device_call_runs_the_engine_with_no_host_copies(tmp_path: Path) -> None:
    cuda = FakeCuda()
    runner = fake_runner(tmp_path, cuda)
    run, release = gpu.device_call(runner, {"x": np.array([[1.0, 2.0, 3.0]], np.float32)}, cuda)
    cuda.calls.clear()
    for _ in range(2):
        out = run()
    assert cuda.calls == ["sync 7", "sync 7"]  # no upload, no download: the engine and the wait only
    np.testing.assert_array_equal(host_view(out["y"].ptr, (1, 3), np.dtype(np.float32)), [[3.0, 5.0, 7.0]])
    release()
    runner.close()
    assert cuda.memory == {}


def test_onnxruntime_device_call_binds_inputs_and_outputs_on_the_sessions_device(tmp_path: Path) -> None:
    from onnx import TensorProto

    from engines.ort import OrtRunner
    from tests.onnx_models import one_op_model

    one_op_model(tmp_path / "relu.onnx", "Relu", TensorProto.FLOAT)
    with OrtRunner(tmp_path / "relu.onnx") as runner:
        run, release = gpu.device_call(runner, {"x": np.array([[-1.0, 0.5, 2.0]], np.float32)})
        out = run()
        assert out[0].device_name().lower() == "cpu"  # the session's device: cuda for onnxruntime-cuda
        np.testing.assert_array_equal(out[0].numpy(), [[0.0, 0.5, 2.0]])
        release()


def test_tensorrt_networks_are_timed_with_and_without_cuda_graphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda()
    asked: list[bool] = []

    def fake_open(backend: str, models: Path, engines: Path, cuda_graph: bool = False) -> dict:
        asked.append(cuda_graph)
        return {name: fake_runner(tmp_path, cuda, f"{name}.engine", cuda_graph=cuda_graph) for name in gpu.NETWORKS}

    monkeypatch.setattr(gpu, "open_runners", fake_open)
    monkeypatch.setattr(gpu, "WARMUP", 1)
    lines = gpu.network_table("trt-fp16", tmp_path, tmp_path, 2, cuda)
    assert asked == [False, True] and cuda.calls.count("graph launch") == 4 * 2  # the second pass replays graphs
    assert re.split(r"\s{2,}", lines[0].strip()) == [
        "per network, median ms", "host to host", "on the device", "device, CUDA graph"
    ]
    assert [line.split()[0] for line in lines[1:]] == [*gpu.NETWORKS, "sum"]
    assert all(len(line.split()) == 4 for line in lines[1:])
    assert cuda.memory == {}  # every runner and upload released
    asked.clear()
    lines = gpu.network_table("ort-cuda", tmp_path, tmp_path, 2, cuda)
    assert asked == [False] and "CUDA graph" not in lines[0]  # ONNX Runtime: nothing to choose


class Pipelined:
    """A processor whose track and render record their order; render of frame n waits until track of frame n+1
    began, so the two threads really overlap (deterministically, by events)."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.tracked = [threading.Event() for _ in range(8)]

    def track(self, frame: int) -> int:
        self.events.append(f"track {frame}")
        self.tracked[frame].set()
        return frame

    def render(self, frame: int) -> None:
        if frame + 1 < 4:
            assert self.tracked[frame + 1].wait(5)
        self.events.append(f"render {frame}")


def test_overlapped_tracks_the_next_frame_while_rendering_and_times_each_frame() -> None:
    processor = Pipelined()
    fps, latency = gpu.overlapped(processor, [0, 1, 2, 3], 4)
    assert len(latency) == 4 and fps > 0 and all(ms >= 0 for ms in latency)
    assert processor.events.index("track 1") < processor.events.index("render 0")
    assert processor.events[-1] == "render 3"


def test_gpu_memory_is_reported_against_the_baseline() -> None:
    used = iter([100 * gpu.MIB, 300 * gpu.MIB, 812 * gpu.MIB])  # context creation, baseline, after the run
    memory = gpu.GpuMemory(SimpleNamespace(memory_used=lambda: next(used)))
    assert memory.line("app open") == "  GPU memory in use, app open: 512 MiB"
