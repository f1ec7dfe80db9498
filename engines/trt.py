"""TensorRT backend: one engine per model, buffers allocated once, all work queued on CUDA streams.

The bookkeeping (which tensors, what shapes, how many bytes, which address is bound) is plain Python that runs
against any object with the TensorRT engine/context methods, so it is unit-tested with fakes on machines without
a GPU. The CUDA calls go through `CudaRuntime`, a thin checked wrapper over NVIDIA's cuda-python, which tests
replace with a host-memory fake.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from engines.base import ModelLoadError, Runner, TensorSpec

log = logging.getLogger(__name__)

#: the first TensorRT whose grid-sample layer takes 5-D input natively (the warping module needs it): the 11.2.1
#: release notes, "Extends GridSample from 2D-only to 3D (rank-5 input)"; 11.2.0 lacks it
MIN_TENSORRT = (11, 2, 1)

#: TensorRT DataType names -> numpy dtypes (by name, so fakes and both TensorRT flavours map the same way)
TRT_DTYPES = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "UINT8": np.dtype(np.uint8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
}


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error, `code` is the error's name."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NoGpuError(ModelLoadError):
    """No NVIDIA GPU can be used; the message says why in the user's terms."""


#: CUDA's start-up errors as a user can act on them (cudart reports a missing driver as an insufficient one)
NO_GPU_REASONS = {
    "cudaErrorInsufficientDriver": "no NVIDIA driver, or one too old for CUDA 13 (it needs driver 580 or newer)",
    "cudaErrorNoDevice": "no NVIDIA GPU was found",
}


class StaleEngineError(ModelLoadError):
    """TensorRT could not deserialise an engine file (other TensorRT version or GPU, or a corrupt file)."""


class RunnerClosedError(RuntimeError):
    """A closed runner was used: its buffers are freed, so it must refuse rather than read freed memory."""


def gpu_memory_error(what: str) -> ModelLoadError:
    """The one message for a failed GPU allocation: cudaMalloc's own error names neither the model nor a fix."""
    return ModelLoadError(f"not enough GPU memory for {what}; close other GPU apps or choose the cuda/cpu backend")


def stream_error(what: str, exc: CudaError) -> ModelLoadError:
    """The one message for a CUDA stream that could not be made while opening a model (CUDA's own error names
    neither the model nor a fix)."""
    if exc.code == "cudaErrorMemoryAllocation":
        return gpu_memory_error(what)
    reason = NO_GPU_REASONS.get(exc.code, exc.code or str(exc))
    return ModelLoadError(
        f"{what}: CUDA could not create a stream ({reason}); restart the app, or choose the cuda/cpu backend"
    )


def version_tuple(text: str) -> tuple[int, ...]:
    """'11.4.0.106' -> (11, 4, 0, 106); non-numeric parts end the tuple."""
    parts: list[int] = []
    for piece in text.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a ModelLoadError that says how to get a usable one."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise ModelLoadError(
            f"TensorRT is not installed ({exc}); pip install -r requirements-gpu.txt or choose another backend"
        ) from exc
    if version_tuple(trt.__version__)[: len(MIN_TENSORRT)] < MIN_TENSORRT:
        raise ModelLoadError(
            f"TensorRT {trt.__version__} is too old ({'.'.join(map(str, MIN_TENSORRT))} or newer has the native "
            "5-D grid sample); pip install -r requirements-gpu.txt"
        )
    return trt


#: the process's TensorRT logger per TensorRT library (keyed by its ILogger class): TensorRT keeps the first
#: logger it is given for the whole process, so every builder and runtime must share it
_LOGGERS: dict[Any, Any] = {}


def trt_logger(trt: Any) -> Any:
    """The one TensorRT logger: errors are kept in `.errors` (for our one-line messages; `clear()` them before a
    build), warnings go to Python logging.

    `.errors` is the calling thread's own list: TensorRT reports an API call's errors on the thread that made the
    call, so one thread's failed deserialisation never becomes the reason given for another thread's build.
    """
    if trt.ILogger not in _LOGGERS:

        class Collector(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self._local = threading.local()

            @property
            def errors(self) -> list[str]:
                if not hasattr(self._local, "errors"):
                    self._local.errors = []
                return self._local.errors

            def log(self, severity: Any, msg: str) -> None:
                text = msg.strip()
                if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                    self.errors.append(text.splitlines()[-1] if text else msg)
                    log.debug("TensorRT: %s", text)
                elif severity == trt.ILogger.WARNING:
                    log.warning("TensorRT: %s", text)

        _LOGGERS[trt.ILogger] = Collector()
    return _LOGGERS[trt.ILogger]


@dataclass(frozen=True)
class GpuInfo:
    """What an engine is specific to: the GPU model and its compute capability."""

    name: str
    compute_capability: tuple[int, int]
    memory_bytes: int = 0

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"


class CudaRuntime:
    """The few CUDA runtime calls the runners need. cuda-python returns error codes, so every call is checked."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime
        except ImportError as exc:
            raise ModelLoadError(
                f"cuda-python is not importable ({exc}); pip install -r requirements-gpu.txt"
            ) from exc
        self.rt = runtime

    def _call(self, name: str, *args: Any) -> Any:
        result = getattr(self.rt, name)(*args)
        err, values = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{name} failed: {err.name}", err.name)
        return values[0] if len(values) == 1 else values or None

    def device(self, index: int = 0) -> GpuInfo:
        props = self._call("cudaGetDeviceProperties", index)
        name = props.name.decode(errors="replace").rstrip("\0") if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name, (int(props.major), int(props.minor)), int(props.totalGlobalMem))

    def memory_used(self) -> int:
        """Bytes of GPU memory in use on the current device, by every process (the benchmark's memory figure)."""
        free, total = self._call("cudaMemGetInfo")
        return int(total) - int(free)

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", max(nbytes, 1)))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def malloc_host(self, nbytes: int) -> int:
        """Pinned (page-locked) host memory: needed for truly asynchronous copies."""
        return int(self._call("cudaMallocHost", max(nbytes, 1)))

    def free_host(self, ptr: int) -> None:
        self._call("cudaFreeHost", ptr)

    def copy_htod(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self._call("cudaMemcpyAsync", dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def copy_dtoh(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self._call("cudaMemcpyAsync", dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def stream_create(self) -> Any:
        return self._call("cudaStreamCreateWithFlags", self.rt.cudaStreamNonBlocking)

    def stream_sync(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def capture_begin(self, stream: Any) -> None:
        self._call("cudaStreamBeginCapture", stream, self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)

    def capture_end(self, stream: Any) -> Any:
        """End a capture and instantiate it: the executable graph replays the captured work in one launch.

        cudaStreamEndCapture ends the capture even when it fails (an invalidated capture), so the stream is
        usable again whatever this raises; the captured graph is destroyed whether instantiation worked or not.
        """
        graph = self._call("cudaStreamEndCapture", stream)
        try:
            return self._call("cudaGraphInstantiate", graph, 0)
        finally:
            self._call("cudaGraphDestroy", graph)

    def graph_launch(self, executable: Any, stream: Any) -> None:
        self._call("cudaGraphLaunch", executable, stream)

    def graph_destroy(self, executable: Any) -> None:
        self._call("cudaGraphExecDestroy", executable)


def find_gpu() -> GpuInfo:
    """The first NVIDIA GPU, or NoGpuError saying why there is none (no cuda-python, no or an old driver, no GPU)."""
    try:
        cuda = CudaRuntime()
        gpu = cuda.device(0) if cuda._call("cudaGetDeviceCount") > 0 else None
    except ModelLoadError as exc:  # cuda-python missing: its message is "<problem>; <fix>"
        raise NoGpuError(str(exc).split("; ")[0]) from exc
    except CudaError as exc:
        raise NoGpuError(NO_GPU_REASONS.get(exc.code, f"CUDA could not start ({exc})")) from exc
    except OSError as exc:
        raise NoGpuError(f"the CUDA libraries could not be loaded ({exc})") from exc
    if gpu is None:
        raise NoGpuError(NO_GPU_REASONS["cudaErrorNoDevice"])
    return gpu


def host_view(ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A numpy array over raw host memory (pinned buffers); the caller keeps the memory alive."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
    return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)


@dataclass(frozen=True)
class IoTensor:
    """One engine input or output: its static shape, dtype and buffer size."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    is_input: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.shape, self.dtype)


def engine_io(engine: Any, source: str = "engine") -> list[IoTensor]:
    """The engine's I/O tensors in engine order; dynamic shapes and unknown dtypes are refused (we build static)."""
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        dtype_name = engine.get_tensor_dtype(name).name
        if any(d < 0 for d in shape):
            raise ModelLoadError(
                f"{source}: tensor {name!r} has a dynamic shape {shape}; engines must be built with static shapes "
                "by `python -m export trt`"
            )
        if dtype_name not in TRT_DTYPES:
            raise ModelLoadError(f"{source}: tensor {name!r} has type {dtype_name}, which this runner cannot feed")
        is_input = engine.get_tensor_mode(name).name == "INPUT"
        tensors.append(IoTensor(name, shape, TRT_DTYPES[dtype_name], is_input))
    return tensors


@dataclass(frozen=True)
class DeviceArray:
    """A tensor in GPU memory. Feed it to another runner to skip the host round trip (warp -> decode)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def deserialize_engine(runtime: Any, path: Path) -> Any:
    """TensorRT returns None (it does not raise) for a plan from another version or GPU: turn that into an error."""
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise StaleEngineError(
            f"{path} could not be deserialised (built by another TensorRT version or for another GPU, or corrupt); "
            "delete it and run `python -m export trt` again"
        )
    return engine


class TrtRunner(Runner):
    """One TensorRT engine behind the Runner interface.

    Buffers are allocated once: each output's device buffer at load; an input's device buffer and pinned host
    staging on its first host feed, an output's pinned host buffer on its first fetch. So inputs always fed from
    another engine on the device (the warping module's feature volume, the generator's feature, the paste
    inputs) cost no memory, and no allocation or free happens at load for them while another stream is busy.
    `enqueue` queues copies and the engine on a stream and returns the outputs as DeviceArrays (valid until this runner's next enqueue); `fetch` copies them
    back. `infer` is both, for the numpy-only callers. With `cuda_graph=True` the engine launch is captured once
    and replayed, which is valid while the bound addresses stay the same (static shapes make that the norm).
    """

    backend = "tensorrt"

    def __init__(
        self,
        path: Path,
        *,
        cuda: Any = None,
        trt: Any = None,
        stream: Any = None,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__(path)
        if not self.path.is_file():
            raise ModelLoadError(
                f"engine file {self.path} is missing; run `python -m export trt --onnx MODELS --out ENGINES`"
            )
        trt = trt if trt is not None else import_tensorrt()
        self._cuda = cuda if cuda is not None else CudaRuntime()
        self._buffers: list[tuple[str, int]] = []
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, int] = {}
        self._graph: Any = None
        self._bound: dict[str, int] = {}
        self._use_graph = cuda_graph
        self._owns_stream = stream is None
        self._runtime: Any = None
        self.engine: Any = None
        self.context: Any = None
        self.stream = self._last_stream = stream  # _last_stream: where the latest work was queued; close() waits
        try:
            if stream is None:
                try:
                    self.stream = self._last_stream = self._cuda.stream_create()
                except CudaError as exc:
                    raise stream_error(self.path.name, exc) from exc
            self._runtime = trt.Runtime(trt_logger(trt))
            self.engine = deserialize_engine(self._runtime, self.path)
            self.context = self.engine.create_execution_context()
            if self.context is None:  # TensorRT returns None when it cannot allocate the context's memory
                raise gpu_memory_error(self.path.name)
            self._io = engine_io(self.engine, self.path.name)
            self.inputs = [t.spec() for t in self._io if t.is_input]
            self.outputs = [t.spec() for t in self._io if not t.is_input]
            for tensor in self._io:
                if not tensor.is_input:
                    self._bind(tensor.name, self._device_buffer(tensor))
        except BaseException:
            self.close()
            raise

    def _alloc(self, kind: str, nbytes: int) -> int:
        try:
            ptr = self._cuda.malloc(nbytes) if kind == "device" else self._cuda.malloc_host(nbytes)
        except CudaError as exc:
            raise gpu_memory_error(self.path.name) from exc
        self._buffers.append((kind, ptr))
        return ptr

    def _device_buffer(self, tensor: IoTensor) -> int:
        """This runner's own device buffer of a tensor, allocated on first use."""
        if tensor.name not in self._device:
            self._device[tensor.name] = self._alloc("device", tensor.nbytes)
        return self._device[tensor.name]

    def _staging(self, tensor: IoTensor) -> np.ndarray:
        """The pinned host buffer of a tensor, allocated on first use (pinned: copies are truly asynchronous)."""
        if tensor.name not in self._host:
            self._host[tensor.name] = host_view(self._alloc("host", tensor.nbytes), tensor.shape, tensor.dtype)
        return self._host[tensor.name]

    def _bind(self, name: str, ptr: int) -> None:
        if self._bound.get(name) != ptr:
            if not self.context.set_tensor_address(name, ptr):
                raise CudaError(f"{self.path.name}: TensorRT refused the address of tensor {name!r}")
            self._bound[name] = ptr
            self._drop_graph()

    def _drop_graph(self) -> None:
        if self._graph is not None:
            self._cuda.graph_destroy(self._graph)
            self._graph = None

    def _check_open(self) -> None:
        if self._cuda is None:
            raise RunnerClosedError(f"{self.path.name}: this TensorRT runner is closed; open the model again")

    def enqueue(self, feeds: Mapping[str, np.ndarray | DeviceArray], stream: Any = None) -> dict[str, DeviceArray]:
        """Queue one run: numpy inputs go through the pinned buffers, DeviceArray inputs are bound in place.

        One enqueue in flight per runner: the pinned input buffers and the output buffers are reused, so the
        caller must `fetch` (or otherwise wait for the stream) before enqueueing this runner again; the
        renderer and the live loop do (each runner is used by one thread, which fetches every frame).
        """
        self._check_open()
        self.check_feeds(feeds)
        stream = self.stream if stream is None else stream
        self._last_stream = stream
        for tensor in self._io:
            if not tensor.is_input:
                continue
            value = feeds[tensor.name]
            if isinstance(value, DeviceArray):
                if np.dtype(value.dtype) != tensor.dtype:
                    raise ValueError(
                        f"{self.path.name}: device input {tensor.name!r} is {np.dtype(value.dtype)}, "
                        f"the engine takes {tensor.dtype}"
                    )
                self._bind(tensor.name, value.ptr)
            else:
                host, device = self._staging(tensor), self._device_buffer(tensor)
                np.copyto(host, value, casting="same_kind")
                self._cuda.copy_htod(device, host.ctypes.data, tensor.nbytes, stream)
                self._bind(tensor.name, device)
        self._execute(stream)
        return {t.name: DeviceArray(self._device[t.name], t.shape, t.dtype) for t in self._io if not t.is_input}

    def _execute(self, stream: Any) -> None:
        if self._graph is not None:
            self._cuda.graph_launch(self._graph, stream)
            return
        if not self.context.execute_async_v3(int(stream)):
            raise CudaError(f"{self.path.name}: TensorRT failed to enqueue the engine")
        if self._use_graph:  # TensorRT sets itself up on the first run, so capture only after one real run
            self._capture(stream)

    def _capture(self, stream: Any) -> None:
        """Capture one launch into a CUDA graph; on any failure end the capture, drop the graph, run without one.

        Captured work does not run, so this frame's results come from the real launch queued just before.
        """
        self._cuda.capture_begin(stream)
        problem = ""
        graph = None
        try:
            if not self.context.execute_async_v3(int(stream)):
                problem = "TensorRT failed to enqueue the engine while capturing"
        except Exception as exc:  # whatever TensorRT raised, the stream must leave capture mode
            problem = str(exc)
        finally:
            try:
                graph = self._cuda.capture_end(stream)
            except CudaError as exc:
                problem = problem or str(exc)
        if problem:
            if graph is not None:
                self._cuda.graph_destroy(graph)
            self._use_graph = False
            log.warning("%s: CUDA graph capture failed (%s); running without a graph", self.path.name, problem)
            return
        self._graph = graph

    def fetch(self, names: Iterable[str] | None = None, stream: Any = None) -> dict[str, np.ndarray]:
        """Copy outputs (all, or the named ones) to the host, wait for the stream, return owned arrays."""
        self._check_open()
        stream = self.stream if stream is None else stream
        chosen = None if names is None else set(names)
        wanted = [t for t in self._io if not t.is_input and (chosen is None or t.name in chosen)]
        for tensor in wanted:
            self._cuda.copy_dtoh(self._staging(tensor).ctypes.data, self._device[tensor.name], tensor.nbytes, stream)
        self._cuda.stream_sync(stream)
        return {t.name: self._host[t.name].copy() for t in wanted}

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.enqueue(feeds)
        return self.fetch()

    def _quietly(self, what: str, call: Any, *args: Any) -> None:
        """One release step of close(): a failure is logged and the remaining steps still run."""
        try:
            call(*args)
        except CudaError as exc:
            log.warning("%s: %s failed while closing: %s", self.path.name, what, exc)

    def close(self) -> None:
        """Wait for queued work, drop the TensorRT objects (context, engine, runtime: that order), free every
        buffer and forget the host views, so a later enqueue/fetch raises instead of touching freed memory."""
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        for stream in {id(s): s for s in (self.stream, self._last_stream) if s is not None}.values():
            self._quietly("stream synchronize", cuda.stream_sync, stream)
        if self._graph is not None:
            self._quietly("graph destroy", cuda.graph_destroy, self._graph)
            self._graph = None
        self.context = None
        self.engine = None
        self._runtime = None
        self._host, self._device, self._bound = {}, {}, {}
        for kind, ptr in reversed(self._buffers):
            self._quietly(f"{kind} free", cuda.free if kind == "device" else cuda.free_host, ptr)
        self._buffers = []
        if self._owns_stream and self.stream is not None:
            self._quietly("stream destroy", cuda.stream_destroy, self.stream)
        self.stream = self._last_stream = None
        self._cuda = None
