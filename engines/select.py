"""Which backend runs the models: TensorRT, ONNX Runtime CUDA or ONNX Runtime CPU, and why, in one sentence.

Each fact comes from a probe that actually tries the thing (import TensorRT, ask CUDA for a device, open an ONNX
Runtime session and read the providers it got, since ONNX Runtime silently falls back to CPU), so the reason
shown to the user is what happened on this machine, not what was installed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from engines.base import ModelLoadError
from engines.trt import GpuInfo, NoGpuError, find_gpu, import_tensorrt

#: user-facing backend names; "auto" picks the first that works of tensorrt, cuda, openvino (f32), cpu
BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "openvino", "openvino-bf16")
#: OpenVINO backend name -> its precision
OPENVINO_PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}


class BackendUnavailable(RuntimeError):
    """The backend that was asked for by name cannot run here; the message says why and what to choose."""


@dataclass(frozen=True)
class BackendChoice:
    """The backend to use ("tensorrt", "cuda" or "cpu") and a sentence the app and CLI show."""

    name: str
    reason: str


def probe_tensorrt() -> str:
    """The TensorRT version, or ModelLoadError saying why it is unusable."""
    return str(import_tensorrt().__version__)


@functools.lru_cache(maxsize=1)
def probe_gpu() -> GpuInfo | str:
    """The first NVIDIA GPU, or why there is none; asked once per process."""
    try:
        return find_gpu()
    except NoGpuError as exc:
        return str(exc)


@functools.lru_cache(maxsize=1)
def probe_ort_providers() -> tuple[str, ...]:
    """The providers a real session got when CUDA was asked for (a tiny in-memory conv model)."""
    import numpy as np
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ("CPUExecutionProvider",)
    from engines.ort_cuda import preload_cuda_libraries
    from onnx import TensorProto, helper, numpy_helper  # in requirements-gpu.txt, the only install with CUDA

    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    preload_cuda_libraries()  # as OrtRunner does: CUDA and cuDNN may come from NVIDIA's pip packages
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    except Exception:  # onnxruntime raises untyped errors when a CUDA library is missing
        return ("CPUExecutionProvider",)
    return tuple(session.get_providers())


@functools.lru_cache(maxsize=1)
def probe_ort_cuda_problem() -> str:
    """Why ONNX Runtime's CUDA provider did not start, naming the missing library where one is missing."""
    from engines.ort_cuda import cuda_problem

    return cuda_problem()


def engines_state(models_dir: Path, gpu: GpuInfo, trt_version: str, precision: str) -> str | None:
    """'ready' when every model has an up-to-date engine, 'buildable' when the ONNX files are there, else None."""
    from engines.layout import MODEL_FILES
    from engines.trt_build import engine_key
    from engines.trt_cache import default_engine_dir, engine_path, stale_reason

    onnx_files = [Path(models_dir) / name for name in MODEL_FILES.values()]
    if not all(path.is_file() for path in onnx_files):
        return None
    for path in onnx_files:
        key = engine_key(path, gpu, trt_version, precision)
        if stale_reason(engine_path(default_engine_dir(models_dir), path.stem, key), key) is not None:
            return "buildable"
    return "ready"


def _tensorrt_problem(models_dir: Path, precision: str) -> tuple[str | None, str]:
    """(None, what TensorRT will do) when it can run, else (the problem, "")."""
    try:
        version = probe_tensorrt()
    except ModelLoadError as exc:  # "<problem>; <fix>": the reason sentence wants the problem only
        return str(exc).split("; ")[0], ""
    gpu = probe_gpu()
    if isinstance(gpu, str):
        return gpu, ""
    state = engines_state(models_dir, gpu, version, precision)
    if state is None:
        return f"{models_dir} lacks the ONNX models to build engines from", ""
    where = f"TensorRT {version} on {gpu.name} ({gpu.sm}), {precision}"
    if state == "ready":
        return None, f"{where}: engines are ready"
    return None, f"{where}: engines will be built on first use (several minutes, once per GPU)"


def openvino_problem(models_dir: Path, precision: str) -> str | None:
    """None when OpenVINO can run the models folder on this CPU in `precision`, else why not (the problem only)."""
    from engines.openvino import REQUIRED_CPU_GRAPH, cpu_capabilities, import_openvino

    try:
        import_openvino()
    except ModelLoadError:
        return "OpenVINO is not installed (pip install openvino)"
    if not (Path(models_dir) / REQUIRED_CPU_GRAPH).is_file():
        return f"{models_dir} lacks {REQUIRED_CPU_GRAPH} (export again with `python -m export onnx --force`)"
    if precision == "bf16" and "BF16" not in cpu_capabilities():
        return "this CPU has no native bf16 (AVX512-BF16 or AMX)"
    return None


def fastest_cpu_backend(models_dir: Path) -> str:
    """The CPU backend `auto` ends with: "openvino" (f32) when it can run the folder here, else "cpu"."""
    return "openvino" if openvino_problem(Path(models_dir), "f32") is None else "cpu"


def choose_backend(requested: str, models_dir: Path, precision: str = "fp16") -> BackendChoice:
    """Pick the backend: a named one if it can run (else BackendUnavailable), or for "auto" the first that can."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "cpu":
        return BackendChoice("cpu", "ONNX Runtime on the CPU, as asked.")
    if requested in OPENVINO_PRECISIONS:
        ov_precision = OPENVINO_PRECISIONS[requested]
        problem = openvino_problem(Path(models_dir), ov_precision)
        if problem:
            raise BackendUnavailable(f"OpenVINO {ov_precision} was asked for, but {problem}; choose the cpu or auto backend")
        return BackendChoice(requested, f"OpenVINO {ov_precision} on the CPU, as asked.")
    trt_problem = None
    if requested in ("auto", "tensorrt"):
        trt_problem, plan = _tensorrt_problem(Path(models_dir), precision)
        if trt_problem is None:
            return BackendChoice("tensorrt", plan + ".")
        if requested == "tensorrt":
            raise BackendUnavailable(f"TensorRT was asked for, but {trt_problem}; choose the cuda, cpu or auto backend")
    providers = probe_ort_providers()
    if "CUDAExecutionProvider" in providers:
        reason = "ONNX Runtime with CUDA" + (f" (TensorRT not used: {trt_problem})" if trt_problem else "") + "."
        return BackendChoice("cuda", reason)
    cuda_problem = f"ONNX Runtime's CUDA provider did not start ({probe_ort_cuda_problem()})"
    if requested == "cuda":
        raise BackendUnavailable(f"ONNX Runtime CUDA was asked for, but {cuda_problem}; choose the cpu or auto backend")
    ov_problem = openvino_problem(Path(models_dir), "f32")
    if ov_problem is None:
        return BackendChoice("openvino", f"OpenVINO f32 on the CPU: {trt_problem}, and {cuda_problem}.")
    return BackendChoice("cpu", f"ONNX Runtime on the CPU: {trt_problem}, {cuda_problem}, and {ov_problem}.")
