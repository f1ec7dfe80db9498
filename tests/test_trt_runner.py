"""TrtRunner's bookkeeping against fakes (host memory stands in for the GPU), and against a real GPU where present."""
from __future__ import annotations

import ctypes
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from engines.base import ModelLoadError
from engines.trt import (
    DeviceArray,
    GpuInfo,
    StaleEngineError,
    TrtRunner,
    TwoStreamPipeline,
    engine_io,
    gpu_info,
    host_view,
)


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

    def event_create(self) -> str:
        return "event"

    def event_record(self, event: Any, stream: Any) -> None:
        self.calls.append(f"record on {stream}")

    def stream_wait_event(self, stream: Any, event: Any) -> None:
        self.calls.append(f"{stream} waits")

    def event_destroy(self, event: Any) -> None:
        pass

    def capture_begin(self, stream: Any) -> None:
        self.capturing = []

    def capture_end(self, stream: Any) -> list[Any]:
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
    anything else into None, as TensorRT does with a plan it cannot load."""

    class Logger:
        WARNING = 0

        def __init__(self, level: int) -> None:
            pass

    def __init__(self, cuda: FakeCuda) -> None:
        load = lambda data: FakeEngine(cuda) if data == b"good" else None  # noqa: E731
        self.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=load)


@pytest.fixture
def cuda() -> FakeCuda:
    return FakeCuda()


def _runner(tmp_path: Path, cuda: FakeCuda, name: str = "m.engine", **options: Any) -> TrtRunner:
    path = tmp_path / name
    path.write_bytes(b"good")
    return TrtRunner(path, cuda=cuda, trt=FakeTrt(cuda), **options)


def test_engine_io_reads_shapes_dtypes_and_byte_sizes(cuda: FakeCuda) -> None:
    io = engine_io(FakeEngine(cuda, (1, 32, 16, 64, 64), "HALF"))
    assert [(t.name, t.shape, t.dtype, t.is_input) for t in io] == [
        ("x", (1, 32, 16, 64, 64), np.dtype(np.float16), True),
        ("y", (1, 32, 16, 64, 64), np.dtype(np.float16), False),
    ]
    assert io[0].nbytes == 32 * 16 * 64 * 64 * 2 == 4_194_304


def test_engine_io_refuses_dynamic_shapes_and_unknown_types(cuda: FakeCuda) -> None:
    with pytest.raises(ModelLoadError) as caught:
        engine_io(FakeEngine(cuda, (-1, 3)), "w.engine")
    assert str(caught.value) == (
        "w.engine: tensor 'x' has a dynamic shape (-1, 3); engines must be built with static shapes by "
        "`python -m export trt`"
    )
    with pytest.raises(ModelLoadError, match=r"^w.engine: tensor 'x' has type BF16, which this runner cannot feed$"):
        engine_io(FakeEngine(cuda, (1, 3), "BF16"), "w.engine")


def test_infer_computes_and_allocates_buffers_once(tmp_path: Path, cuda: FakeCuda) -> None:
    runner = _runner(tmp_path, cuda)
    assert [(s.name, s.shape) for s in runner.inputs] == [("x", (1, 3))]
    assert [(s.name, s.shape) for s in runner.outputs] == [("y", (1, 3))]
    for step in range(3):
        out = runner.infer({"x": np.array([[1.0, 2.0, step]])})  # float64 in: cast into the float32 buffer
        np.testing.assert_array_equal(out["y"], [[3.0, 5.0, 2 * step + 1]])
    assert cuda.calls.count("malloc") == 2 and cuda.calls.count("malloc_host") == 2
    runner.close()
    assert cuda.memory == {}
    assert "destroy stream 7" in cuda.calls


def test_device_outputs_feed_the_next_runner_without_a_host_round_trip(tmp_path: Path, cuda: FakeCuda) -> None:
    warp, decode = _runner(tmp_path, cuda, "warp.engine"), _runner(tmp_path, cuda, "decode.engine")
    cuda.calls.clear()
    warped = warp.enqueue({"x": np.array([[0.0, 1.0, -1.0]], np.float32)})["y"]
    assert isinstance(warped, DeviceArray) and warped.shape == (1, 3)
    out = decode.enqueue({"x": warped})
    assert out["y"].ptr != warped.ptr
    np.testing.assert_array_equal(decode.fetch()["y"], [[3.0, 7.0, -1.0]])  # 2 * (2x + 1) + 1
    assert cuda.calls.count("htod") == 1 and cuda.calls.count("dtoh") == 1


def test_bad_feeds_are_refused_with_the_tensor_named(tmp_path: Path, cuda: FakeCuda) -> None:
    runner = _runner(tmp_path, cuda)
    with pytest.raises(ValueError, match=r"^m.engine: input 'x' has shape \(1, 4\), the model takes \(1, 3\)$"):
        runner.infer({"x": np.zeros((1, 4), np.float32)})
    wrong = DeviceArray(runner.enqueue({"x": np.zeros((1, 3))})["y"].ptr, (1, 3), np.dtype(np.float16))
    with pytest.raises(ValueError, match=r"^m.engine: device input 'x' is float16, the engine takes float32$"):
        runner.enqueue({"x": wrong})


def test_cuda_graph_replays_and_is_dropped_when_an_address_changes(tmp_path: Path, cuda: FakeCuda) -> None:
    runner = _runner(tmp_path, cuda, cuda_graph=True)
    first = _runner(tmp_path, cuda, "first.engine")
    context = runner.context
    for value in (1.0, 2.0, 3.0):
        np.testing.assert_array_equal(runner.infer({"x": np.full((1, 3), value)})["y"], np.full((1, 3), 2 * value + 1))
    assert context.runs == 3 and cuda.calls.count("graph launch") == 2
    chained = runner.enqueue({"x": first.enqueue({"x": np.ones((1, 3))})["y"]})  # another address: recapture
    assert "graph destroy" in cuda.calls
    np.testing.assert_array_equal(host_view(chained["y"].ptr, (1, 3), np.dtype(np.float32)), np.full((1, 3), 7.0))


def test_an_engine_tensorrt_cannot_deserialise_is_reported(tmp_path: Path, cuda: FakeCuda) -> None:
    path = tmp_path / "old.engine"
    path.write_bytes(b"from another TensorRT")
    with pytest.raises(StaleEngineError) as caught:
        TrtRunner(path, cuda=cuda, trt=FakeTrt(cuda))
    assert str(caught.value) == (
        f"{path} could not be deserialised (built by another TensorRT version or for another GPU, or corrupt); "
        "delete it and run `python -m export trt` again"
    )
    assert cuda.memory == {}


def test_a_missing_engine_file_says_how_to_build_it(tmp_path: Path, cuda: FakeCuda) -> None:
    with pytest.raises(ModelLoadError, match=r"engine file .*none.engine is missing; run `python -m export trt"):
        TrtRunner(tmp_path / "none.engine", cuda=cuda, trt=FakeTrt(cuda))


def test_open_trt_runner_rebuilds_an_engine_that_fails_to_deserialise(tmp_path: Path, cuda: FakeCuda) -> None:
    from export import trt_build
    from tests.test_trt_build import save, warp_like

    rtx = pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")
    onnx_path = save(warp_like(), tmp_path / "spade_generator.onnx")
    cache, log, gpu = tmp_path / "engines", [], GpuInfo("Test GPU", (8, 6))
    trt_build.ensure_engine(onnx_path, cache, "fp16", log.append, trt=rtx, gpu=gpu)
    loads: list[bytes] = []

    class Runtime:  # the real builder, a runtime that rejects the first plan (as after a driver update)
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            loads.append(data)
            return FakeEngine(cuda) if len(loads) > 1 else None

    trt = SimpleNamespace(**{k: getattr(rtx, k) for k in dir(rtx) if not k.startswith("_")})
    trt.Runtime, trt.__version__ = Runtime, rtx.__version__
    log.clear()
    runner = trt_build.open_trt_runner(onnx_path, cache, "fp16", log.append, trt=trt, gpu=gpu, cuda=cuda)
    assert len(loads) == 2 and isinstance(runner, TrtRunner)
    assert log[1].endswith("could not be deserialised (built by another TensorRT version or for another GPU, or "
                           "corrupt); delete it and run `python -m export trt` again; rebuilding it")
    assert log[2].startswith("spade_generator: building the fp16 engine (no engine yet)")


def test_two_stream_pipeline_overlaps_extract_of_the_next_frame_with_render(cuda: FakeCuda) -> None:
    pipeline = TwoStreamPipeline(cuda)
    order: list[str] = []

    def extract(frame: int, stream: Any) -> int:
        order.append(f"extract {frame}")
        return frame * 10

    def render(motion: int, stream: Any):
        order.append(f"render {motion // 10}")
        return lambda: order.append(f"done {motion // 10}") or motion + 1

    assert list(pipeline.run([1, 2, 3], extract, render)) == [11, 21, 31]
    assert order == ["extract 1", "render 1", "extract 2", "done 1", "render 2", "extract 3", "done 2", "render 3", "done 3"]
    pipeline.close()


@pytest.fixture(scope="module")
def real_gpu() -> tuple[Any, GpuInfo]:
    gpu = gpu_info()
    try:
        from engines.trt import import_tensorrt

        trt = import_tensorrt()
    except ModelLoadError:
        trt = None
    if gpu is None or trt is None:
        pytest.skip("no NVIDIA GPU / tensorrt not importable")
    return trt, gpu


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_tensorrt_engine_matches_onnxruntime(real_gpu, tmp_path: Path, precision: str, tolerance: float) -> None:
    import onnxruntime as ort

    from export.trt_build import open_trt_runner
    from tests.test_trt_build import save, warp_feeds, warp_like

    path = save(warp_like(), tmp_path / "warping_module.onnx")
    feeds = warp_feeds()
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with open_trt_runner(path, tmp_path / "engines", precision, print, cuda_graph=True) as runner:
        for _ in range(3):  # plain run, captured run, graph replay
            got = runner.infer(feeds)["image"]
            np.testing.assert_allclose(got, expected, atol=tolerance)
