"""TrtRunner's bookkeeping against fakes (host memory stands in for the GPU), and against a real GPU where present."""
from __future__ import annotations

import logging
import inspect
import re
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from engines.base import ModelLoadError
from engines.trt import (
    NO_GPU_REASONS,
    CudaError,
    CudaRuntime,
    DeviceArray,
    GpuInfo,
    NoGpuError,
    RunnerClosedError,
    StaleEngineError,
    TrtRunner,
    engine_io,
    find_gpu,
    host_view,
    import_tensorrt,
    trt_logger,
)
from tests.fake_trt import FakeCuda, FakeEngine, FakeTrt, fake_runner


@pytest.fixture
def cuda() -> FakeCuda:
    return FakeCuda()


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
    runner = fake_runner(tmp_path, cuda)
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
    warp, decode = fake_runner(tmp_path, cuda, "warp.engine"), fake_runner(tmp_path, cuda, "decode.engine")
    cuda.calls.clear()
    warped = warp.enqueue({"x": np.array([[0.0, 1.0, -1.0]], np.float32)})["y"]
    assert isinstance(warped, DeviceArray) and warped.shape == (1, 3)
    out = decode.enqueue({"x": warped})
    assert out["y"].ptr != warped.ptr
    np.testing.assert_array_equal(decode.fetch()["y"], [[3.0, 7.0, -1.0]])  # 2 * (2x + 1) + 1
    assert cuda.calls.count("htod") == 1 and cuda.calls.count("dtoh") == 1


def test_bad_feeds_are_refused_with_the_tensor_named(tmp_path: Path, cuda: FakeCuda) -> None:
    runner = fake_runner(tmp_path, cuda)
    with pytest.raises(ValueError, match=r"^m.engine: input 'x' has shape \(1, 4\), the model takes \(1, 3\)$"):
        runner.infer({"x": np.zeros((1, 4), np.float32)})
    wrong = DeviceArray(runner.enqueue({"x": np.zeros((1, 3))})["y"].ptr, (1, 3), np.dtype(np.float16))
    with pytest.raises(ValueError, match=r"^m.engine: device input 'x' is float16, the engine takes float32$"):
        runner.enqueue({"x": wrong})


def test_cuda_graph_replays_and_is_dropped_when_an_address_changes(tmp_path: Path, cuda: FakeCuda) -> None:
    runner = fake_runner(tmp_path, cuda, cuda_graph=True)
    first = fake_runner(tmp_path, cuda, "first.engine")
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


def test_open_trt_runner_rebuilds_an_engine_that_fails_to_deserialise(rtx, tmp_path: Path, cuda: FakeCuda) -> None:
    from engines import trt_build
    from tests.onnx_models import save, warp_like

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
    assert len(loads) == 2 and [(s.name, s.shape) for s in runner.inputs] == [("x", (1, 3))]  # the second load runs
    assert log[1].endswith("could not be deserialised (built by another TensorRT version or for another GPU, or "
                           "corrupt); delete it and run `python -m export trt` again; rebuilding it")
    assert log[2].startswith("spade_generator: building the fp16 engine (no engine yet)")


class FailingCapture(FakeCuda):
    """CUDA whose graph capture fails at `when`: 'end' (an invalidated capture) or 'enqueue' (TensorRT refuses)."""

    def __init__(self, when: str) -> None:
        super().__init__()
        self.when = when
        self.destroyed: list[Any] = []

    def capture_end(self, stream: Any) -> list[Any]:
        graph = super().capture_end(stream)
        if self.when == "end":
            raise CudaError("cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalidated")
        return graph

    def graph_destroy(self, graph: Any) -> None:
        super().graph_destroy(graph)
        self.destroyed.append(graph)


@pytest.mark.parametrize("when", ["end", "enqueue"])
def test_a_failed_graph_capture_is_ended_and_the_runner_goes_on_without_a_graph(
    tmp_path: Path, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    cuda = FailingCapture(when)
    runner = fake_runner(tmp_path, cuda, cuda_graph=True)
    if when == "enqueue":  # the real run works, the captured one is refused
        real = runner.context.execute_async_v3
        runner.context.execute_async_v3 = lambda handle: cuda.capturing is None and real(handle)
    for value in (1.0, 2.0, 3.0):
        np.testing.assert_array_equal(runner.infer({"x": np.full((1, 3), value)})["y"], np.full((1, 3), 2 * value + 1))
    assert cuda.calls.count("capture begin") == cuda.calls.count("capture end") == 1  # ended, and never retried
    assert cuda.capturing is None and "graph launch" not in cuda.calls
    assert len(cuda.destroyed) == (1 if when == "enqueue" else 0)  # an instantiated graph is destroyed
    assert "m.engine: CUDA graph capture failed" in caplog.text and "running without a graph" in caplog.text
    runner.close()
    assert cuda.memory == {}


def test_close_waits_frees_everything_and_a_closed_runner_refuses(tmp_path: Path, cuda: FakeCuda) -> None:
    runner = fake_runner(tmp_path, cuda)
    runner.enqueue({"x": np.ones((1, 3))}, stream=9)  # queued on a caller's stream: close waits for it too
    cuda.calls.clear()
    runner.close()
    assert cuda.calls[:2] == ["sync 7", "sync 9"] and cuda.calls[-1] == "destroy stream 7"
    assert cuda.memory == {} and runner.context is None and runner.engine is None
    with pytest.raises(RunnerClosedError, match=r"^m.engine: this TensorRT runner is closed; open the model again$"):
        runner.fetch()
    with pytest.raises(RunnerClosedError):
        runner.infer({"x": np.ones((1, 3))})
    runner.close()  # closing twice is harmless


def test_close_frees_the_other_buffers_when_one_free_fails(tmp_path: Path, cuda: FakeCuda, caplog) -> None:
    runner = fake_runner(tmp_path, cuda)
    first_device = next(iter(cuda.memory))
    free = cuda.free

    def flaky_free(ptr: int) -> None:
        if ptr == first_device:
            raise CudaError("cudaFree failed: cudaErrorIllegalAddress")
        free(ptr)

    cuda.free = flaky_free
    runner.close()
    assert list(cuda.memory) == [first_device]  # only the failing one is left
    assert "device free failed while closing: cudaFree failed: cudaErrorIllegalAddress" in caplog.text
    assert "destroy stream 7" in cuda.calls


@pytest.mark.parametrize("failing", [1, 2])  # the output's buffer at load, the input's on its first host feed
def test_out_of_gpu_memory_names_the_model_and_frees_what_was_allocated(
    tmp_path: Path, cuda: FakeCuda, failing: int
) -> None:
    malloc = cuda.malloc

    def nth_fails(nbytes: int) -> int:
        if cuda.calls.count("malloc") == failing - 1:
            cuda.calls.append("malloc")
            raise CudaError("cudaMalloc failed: cudaErrorMemoryAllocation")
        return malloc(nbytes)

    cuda.malloc = nth_fails
    with pytest.raises(ModelLoadError) as caught:
        fake_runner(tmp_path, cuda, "warping_module.engine").infer({"x": np.ones((1, 3))})
    assert str(caught.value) == (
        "not enough GPU memory for warping_module.engine; close other GPU apps or choose the cuda/cpu backend"
    )
    if failing == 1:
        assert cuda.memory == {}


def test_only_host_fed_inputs_and_fetched_outputs_get_host_buffers(tmp_path: Path, cuda: FakeCuda) -> None:
    """An input always fed from another engine on the device (warp -> decode) gets neither a device buffer of its
    own nor pinned host staging; allocation happens on first use, once."""
    warp, decode = fake_runner(tmp_path, cuda, "warp.engine"), fake_runner(tmp_path, cuda, "decode.engine")
    assert cuda.calls.count("malloc") == 2 and cuda.calls.count("malloc_host") == 0  # each engine's output only
    for step in range(3):
        warped = warp.enqueue({"x": np.full((1, 3), float(step))})["y"]
        decode.enqueue({"x": warped})
        np.testing.assert_array_equal(decode.fetch()["y"], np.full((1, 3), 4.0 * step + 3))
    # warp: its input's device buffer and staging; decode: its output's host buffer (first fetch); nothing else
    assert cuda.calls.count("malloc") == 3 and cuda.calls.count("malloc_host") == 2
    assert decode.context.addresses["x"] == warped.ptr
    warp.close(), decode.close()
    assert cuda.memory == {}


class NoStreamCuda(FakeCuda):
    def __init__(self, code: str) -> None:
        super().__init__()
        self.code = code

    def stream_create(self) -> int:
        raise CudaError(f"cudaStreamCreateWithFlags failed: {self.code}", self.code)


@pytest.mark.parametrize("code, message", [
    ("cudaErrorMemoryAllocation",
     "not enough GPU memory for m.engine; close other GPU apps or choose the cuda/cpu backend"),
    ("cudaErrorInsufficientDriver",
     "m.engine: CUDA could not create a stream (no NVIDIA driver, or one too old for CUDA 13 (it needs driver 580 "
     "or newer)); restart the app, or choose the cuda/cpu backend"),
    ("cudaErrorLaunchFailure",
     "m.engine: CUDA could not create a stream (cudaErrorLaunchFailure); restart the app, or choose the cuda/cpu "
     "backend"),
])
def test_a_stream_that_cannot_be_created_is_a_one_line_model_load_error(tmp_path: Path, code: str, message: str) -> None:
    cuda = NoStreamCuda(code)
    with pytest.raises(ModelLoadError) as caught:
        fake_runner(tmp_path, cuda)
    assert str(caught.value) == message and not isinstance(caught.value, CudaError)
    assert cuda.memory == {} and not any(call.startswith("destroy stream") for call in cuda.calls)


@pytest.mark.parametrize("version, usable", [
    ("11.2.0.54", False), ("11.2", False), ("10.13.3.9", False), ("11.2.1.7", True), ("11.3.0.1", True), ("12.0.0", True),
])
def test_tensorrt_needs_11_2_1_for_the_5d_grid_sample(monkeypatch: pytest.MonkeyPatch, version: str, usable: bool) -> None:
    module = SimpleNamespace(__version__=version)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    if usable:
        assert import_tensorrt() is module
        return
    with pytest.raises(ModelLoadError) as caught:
        import_tensorrt()
    assert str(caught.value) == (
        f"TensorRT {version} is too old (11.2.1 or newer has the native 5-D grid sample); "
        "pip install -r requirements-gpu.txt"
    )


def test_each_thread_reads_only_the_tensorrt_errors_of_its_own_calls(cuda: FakeCuda) -> None:
    """A deserialisation failing on the tracking thread while the render thread builds must not become the build's
    reason: the logger keeps one error list per thread."""
    trt = FakeTrt(cuda)
    logger = trt_logger(trt)
    logger.errors.clear()
    logger.log(trt.ILogger.ERROR, "Error Code 4: no implementation for layer 'grid'\n")
    other = threading.Thread(target=logger.log, args=(trt.ILogger.INTERNAL_ERROR, "Serialization assertion failed"))
    other.start()
    other.join()
    assert logger.errors == ["Error Code 4: no implementation for layer 'grid'"]
    seen: list[list[str]] = []
    reader = threading.Thread(target=lambda: seen.append(list(logger.errors)))
    reader.start()
    reader.join()
    assert seen == [[]]  # a fresh thread starts with no errors, not another thread's
    logger.errors.clear()


def test_every_runtime_gets_the_one_process_logger(tmp_path: Path, cuda: FakeCuda) -> None:
    trt = FakeTrt(cuda)
    for name in ("a.engine", "b.engine"):
        (tmp_path / name).write_bytes(b"good")
        TrtRunner(tmp_path / name, cuda=cuda, trt=trt).close()
    assert len(trt.loggers) == 2 and trt.loggers[0] is trt.loggers[1] is trt_logger(trt)
    assert trt_logger(FakeTrt(cuda)) is trt.loggers[0]  # the same TensorRT library: the same logger


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_tensorrt_engine_matches_onnxruntime(real_gpu, tmp_path: Path, precision: str, tolerance: float) -> None:
    import onnxruntime as ort

    from engines.trt_build import open_trt_runner
    from tests.onnx_models import save, warp_feeds, warp_like

    path = save(warp_like(), tmp_path / "warping_module.onnx")
    feeds = warp_feeds()
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with open_trt_runner(path, tmp_path / "engines", precision, print, cuda_graph=True) as runner:
        for _ in range(3):  # plain run, captured run, graph replay
            got = runner.infer(feeds)["image"]
            np.testing.assert_allclose(got, expected, atol=tolerance)


def test_the_pinned_cuda_python_takes_every_call_and_no_gpu_is_explained(cuda_runtime) -> None:
    """The real cuda-python of requirements (not a fake): every runtime call CudaRuntime makes exists, each method
    reaches CUDA with arguments of the types it accepts, and on a machine without a driver the failure is CUDA's
    own error code, which find_gpu turns into the user's reason."""
    import cuda.bindings

    assert cuda.bindings.__version__.split(".")[0] == "13"  # requirements-gpu.txt pins cuda-python 13
    try:
        gpu = find_gpu()
    except NoGpuError as exc:
        no_gpu = str(exc)
    else:
        pytest.skip(f"this machine has a GPU ({gpu.name}): the no-driver path cannot be seen here (the gpu tests run)")
    names = set(re.findall(r'_call\("(\w+)"', inspect.getsource(CudaRuntime) + inspect.getsource(find_gpu)))
    assert len(names) == 17 and {name for name in names if not hasattr(cuda_runtime, name)} == set()
    calls = {
        "device": (0,), "memory_used": (), "malloc": (16,), "free": (0,), "malloc_host": (16,), "free_host": (0,),
        "copy_htod": (0, 0, 4, 0), "copy_dtoh": (0, 0, 4, 0), "stream_create": (), "stream_sync": (0,),
        "stream_destroy": (0,), "capture_begin": (0,), "capture_end": (0,), "graph_launch": (0, 0), "graph_destroy": (0,),
    }
    assert set(calls) == {name for name in vars(CudaRuntime) if not name.startswith("_")}
    ours = CudaRuntime()
    for method, args in calls.items():
        with pytest.raises(CudaError) as caught:
            getattr(ours, method)(*args)
        assert caught.value.code in NO_GPU_REASONS, (method, str(caught.value))
    assert no_gpu in NO_GPU_REASONS.values()


class StreamCuda(FakeCuda):
    """Distinct streams; using a destroyed one fails, as CUDA's invalid-handle error does."""

    def __init__(self) -> None:
        super().__init__()
        self.streams = 10
        self.destroyed: set[int] = set()

    def stream_create(self) -> int:
        self.streams += 1
        return self.streams

    def stream_sync(self, stream: Any) -> None:
        if stream in self.destroyed:
            raise CudaError("cudaStreamSynchronize failed: cudaErrorInvalidResourceHandle", "cudaErrorInvalidResourceHandle")
        super().stream_sync(stream)

    def stream_destroy(self, stream: Any) -> None:
        self.destroyed.add(stream)
        super().stream_destroy(stream)


def test_networks_close_the_generator_before_the_warping_module_whose_stream_it_uses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from engines.layout import NETWORK_ONNX
    from core.animator import Networks

    cuda = StreamCuda()
    nets = Networks.__new__(Networks)  # the real close() over runners opened on the fake CUDA
    nets.runners = {name: fake_runner(tmp_path, cuda, f"{name}.engine") for name in NETWORK_ONNX}
    warp, generator = nets.runners["warping_module"], nets.runners["spade_generator"]
    stream = warp.stream
    generator.enqueue({"x": np.zeros((1, 3), np.float32)}, stream)  # as the GPU renderer chains decode
    with caplog.at_level(logging.WARNING, logger="engines.trt"):
        nets.close()
    assert caplog.records == []  # no "stream synchronize failed while closing"
    assert cuda.calls.index(f"sync {stream}") < cuda.calls.index(f"destroy stream {stream}")
    assert cuda.memory == {}
