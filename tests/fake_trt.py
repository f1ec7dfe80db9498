"""A fake CUDA and TensorRT for TrtRunner without a GPU (test_trt_runner, test_bench_gpu): host memory stands in
for device memory and an engine computes y = 2 * x + 1."""
from __future__ import annotations

import ctypes
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from engines.trt import TrtRunner, host_view


class FakeCuda:
    """CUDA with host memory as 'device' memory: copies are memmoves, a captured graph replays its calls."""

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.calls: list[str] = []
        self.capturing: list[Any] | None = None

    def _alloc(self, nbytes: int) -> int:
        block = np.zeros(max(nbytes, 1), np.uint8)
        self.memory[block.ctypes.data] = block
        return block.ctypes.data

    def malloc(self, nbytes: int) -> int:
        self.calls.append("malloc")
        return self._alloc(nbytes)

    def malloc_host(self, nbytes: int) -> int:
        self.calls.append("malloc_host")
        return self._alloc(nbytes)

    def free(self, ptr: int) -> None:
        del self.memory[ptr]

    free_host = free

    def copy_htod(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.calls.append("htod")
        ctypes.memmove(dst, src, nbytes)

    def copy_dtoh(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.calls.append("dtoh")
        ctypes.memmove(dst, src, nbytes)

    def stream_create(self) -> int:
        return 7

    def stream_sync(self, stream: Any) -> None:
        self.calls.append(f"sync {stream}")

    def stream_destroy(self, stream: Any) -> None:
        self.calls.append(f"destroy stream {stream}")

    def capture_begin(self, stream: Any) -> None:
        self.calls.append("capture begin")
        self.capturing = []

    def capture_end(self, stream: Any) -> list[Any]:
        self.calls.append("capture end")
        graph, self.capturing = self.capturing, None
        return graph

    def graph_launch(self, graph: list[Any], stream: Any) -> None:
        self.calls.append("graph launch")
        for work in graph:
            work()

    def graph_destroy(self, graph: Any) -> None:
        self.calls.append("graph destroy")


class Enum(SimpleNamespace):
    """A TensorRT enum value: the runner only reads `.name`."""


class FakeEngine:
    """An engine y = 2 * x + 1 over float32 tensors of `shape` (dtype names as TensorRT spells them)."""

    def __init__(self, cuda: FakeCuda, shape: tuple[int, ...] = (1, 3), dtype: str = "FLOAT") -> None:
        self.cuda = cuda
        self.tensors = {"x": (shape, dtype, "INPUT"), "y": (shape, dtype, "OUTPUT")}
        self.num_io_tensors = 2

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str) -> Enum:
        return Enum(name=self.tensors[name][1])

    def get_tensor_mode(self, name: str) -> Enum:
        return Enum(name=self.tensors[name][2])

    def create_execution_context(self) -> "FakeContext":
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.runs = 0

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        shape = self.engine.tensors["x"][0]
        x, y = (host_view(self.addresses[n], shape, np.dtype(np.float32)) for n in ("x", "y"))

        def work() -> None:
            self.runs += 1
            y[...] = 2 * x + 1

        if self.engine.cuda.capturing is not None:
            self.engine.cuda.capturing.append(work)
        else:
            work()
        return True


class FakeTrt:
    """The slice of the tensorrt module TrtRunner touches; its Runtime deserialises b"good" into a FakeEngine and
    anything else into None, as TensorRT does with a plan it cannot load. It records the loggers it was given."""

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING = "internal error", "error", "warning"

        def __init__(self) -> None:
            pass

    def __init__(self, cuda: FakeCuda) -> None:
        load = lambda data: FakeEngine(cuda) if data == b"good" else None  # noqa: E731
        self.loggers: list[Any] = []
        self.Runtime = lambda logger: self.loggers.append(logger) or SimpleNamespace(deserialize_cuda_engine=load)


def fake_runner(tmp_path: Path, cuda: FakeCuda, name: str = "m.engine", **options: Any) -> TrtRunner:
    """A TrtRunner on a FakeEngine: the plan file `name` under tmp_path holds b"good"."""
    path = tmp_path / name
    path.write_bytes(b"good")
    return TrtRunner(path, cuda=cuda, trt=FakeTrt(cuda), **options)
