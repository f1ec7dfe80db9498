"""Backend choice with the machine probes replaced, plus what this GPU-less machine really gets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engines
from engines import select
from engines.base import ModelLoadError
from engines.select import BackendChoice, BackendUnavailable, choose_backend
from engines.trt import GpuInfo
from tests.onnx_models import one_op_model

GPU = GpuInfo("NVIDIA GeForce RTX 4090", (8, 9))
CUDA_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU_ONLY = ("CPUExecutionProvider",)


def _no_tensorrt() -> str:
    raise ModelLoadError("TensorRT is not installed (No module named 'tensorrt'); pip install -r requirements-gpu.txt")


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """Set what the probes report: TensorRT version (None: not installed), GPU, ORT providers, engines state."""

    def set_machine(trt: str | None, gpu: GpuInfo | None, providers: tuple[str, ...], engines_state: str | None) -> None:
        monkeypatch.setattr(select, "probe_tensorrt", (lambda: trt) if trt else _no_tensorrt)
        monkeypatch.setattr(select, "probe_gpu", lambda: gpu or "no NVIDIA GPU was found")
        monkeypatch.setattr(select, "probe_ort_providers", lambda: providers)
        monkeypatch.setattr(select, "engines_state", lambda *args: engines_state)
        monkeypatch.setattr(select, "probe_ort_cuda_problem", lambda: "Failed to load libcudnn.so.9")
        monkeypatch.setattr(select, "openvino_problem", lambda *args: "OpenVINO is not installed (pip install openvino)")

    return set_machine


def test_auto_takes_tensorrt_with_engines_ready(machine, tmp_path: Path) -> None:
    machine("11.4.0", GPU, CUDA_PROVIDERS, "ready")
    assert choose_backend("auto", tmp_path) == BackendChoice(
        "tensorrt", "TensorRT 11.4.0 on NVIDIA GeForce RTX 4090 (sm89), fp16: engines are ready."
    )


def test_auto_takes_tensorrt_when_engines_can_be_built(machine, tmp_path: Path) -> None:
    machine("11.4.0", GPU, CPU_ONLY, "buildable")
    choice = choose_backend("auto", tmp_path, precision="fp32")
    assert choice.name == "tensorrt"
    assert choice.reason.endswith("fp32: engines will be built on first use (several minutes, once per GPU).")


def test_auto_falls_back_to_onnxruntime_cuda_and_says_why(machine, tmp_path: Path) -> None:
    machine(None, GPU, CUDA_PROVIDERS, "ready")
    assert choose_backend("auto", tmp_path) == BackendChoice(
        "cuda", "ONNX Runtime with CUDA (TensorRT not used: TensorRT is not installed (No module named 'tensorrt'))."
    )
    machine("11.4.0", GPU, CUDA_PROVIDERS, None)
    assert choose_backend("auto", tmp_path).reason == (
        f"ONNX Runtime with CUDA (TensorRT not used: {tmp_path} lacks the ONNX models to build engines from)."
    )


def test_auto_ends_on_the_cpu_when_the_cuda_session_fell_back(machine, tmp_path: Path) -> None:
    machine("11.4.0", None, CPU_ONLY, None)
    assert choose_backend("auto", tmp_path) == BackendChoice(
        "cpu",
        "ONNX Runtime on the CPU: no NVIDIA GPU was found, ONNX Runtime's CUDA provider did not start "
        "(Failed to load libcudnn.so.9), and OpenVINO is not installed (pip install openvino).",
    )


def test_a_named_backend_that_cannot_run_is_an_error(machine, tmp_path: Path) -> None:
    machine("11.4.0", None, CPU_ONLY, None)
    with pytest.raises(BackendUnavailable) as caught:
        choose_backend("tensorrt", tmp_path)
    assert str(caught.value) == (
        "TensorRT was asked for, but no NVIDIA GPU was found; choose the cuda, cpu or auto backend"
    )
    with pytest.raises(BackendUnavailable) as caught:
        choose_backend("cuda", tmp_path)
    assert str(caught.value) == (
        "ONNX Runtime CUDA was asked for, but ONNX Runtime's CUDA provider did not start (Failed to load "
        "libcudnn.so.9); choose the cpu or auto backend"
    )


def test_named_backends_that_can_run_are_taken(machine, tmp_path: Path) -> None:
    machine("11.4.0", GPU, CUDA_PROVIDERS, "ready")
    assert choose_backend("cuda", tmp_path) == BackendChoice("cuda", "ONNX Runtime with CUDA.")
    assert choose_backend("cpu", tmp_path) == BackendChoice("cpu", "ONNX Runtime on the CPU, as asked.")
    with pytest.raises(ValueError, match=r"^unknown backend 'vulkan'; choose one of auto, cpu, cuda, tensorrt, openvino, openvino-bf16$"):
        choose_backend("vulkan", tmp_path)


def test_this_machine_gets_what_its_probes_allow(tmp_path: Path) -> None:
    """The real probes: a folder without models never takes TensorRT; ONNX Runtime CUDA when a real session got the
    CUDA provider (a GPU machine with onnxruntime-gpu), else the CPU with the reasons."""
    select.probe_gpu.cache_clear()
    select.probe_ort_providers.cache_clear()
    choice = choose_backend("auto", tmp_path)
    if "CUDAExecutionProvider" in select.probe_ort_providers():
        assert choice.name == "cuda" and choice.reason.startswith("ONNX Runtime with CUDA (TensorRT not used: ")
    else:
        assert choice.name != "cuda" and choice.name != "tensorrt"
        assert f"ONNX Runtime's CUDA provider did not start ({select.probe_ort_cuda_problem()})" in choice.reason


def test_open_runner_keeps_the_onnxruntime_backends_and_adds_tensorrt(tmp_path: Path) -> None:
    from onnx import TensorProto

    one_op_model(tmp_path / "stitching.onnx", "Relu", TensorProto.FLOAT)
    assert engines.BACKENDS == ("auto", "cpu", "cuda", "tensorrt", "openvino", "openvino-bf16")
    chosen = choose_backend("auto", tmp_path).name  # what auto takes on this machine (the CPU, or CUDA on a GPU)
    for backend in ("cpu", "auto"):
        with engines.open_runner(tmp_path / "stitching.onnx", backend) as runner:
            with engines.open_runner(tmp_path / "stitching.onnx", chosen if backend == "auto" else "cpu") as named:
                assert runner.backend == named.backend
            assert backend == "auto" or runner.backend == "onnxruntime-cpu"
            np.testing.assert_array_equal(runner.infer({"x": np.array([[-1.0, 0.0, 2.0]], np.float32)})["y"], [[0, 0, 2]])
    with pytest.raises(ValueError, match=r"^unknown backend 'gpu'; choose one of auto, cpu, cuda, tensorrt, openvino, openvino-bf16$"):
        engines.open_runner(tmp_path / "stitching.onnx", "gpu")
    if isinstance(select.probe_gpu(), str):  # no GPU here: its reason, not a traceback
        with pytest.raises(ModelLoadError, match=r"^(TensorRT is not installed|no NVIDIA)"):
            engines.open_runner(tmp_path / "stitching.onnx", "tensorrt")


def test_onnxruntime_refuses_a_model_with_a_tensor_type_it_cannot_feed(tmp_path: Path) -> None:
    from onnx import TensorProto

    from engines.ort import OrtRunner

    one_op_model(tmp_path / "mask.onnx", "Not", TensorProto.BOOL)
    with pytest.raises(ModelLoadError) as caught:
        OrtRunner(tmp_path / "mask.onnx")
    assert str(caught.value) == (
        "mask.onnx: tensor 'x' has type tensor(bool), which this app cannot feed; "
        "re-export the models folder with `python -m export onnx`"
    )


LIBCUBLAS_MISSING = (
    "Failed to load /venv/site-packages/nvidia/cu13/lib/libcublasLt.so.13: libcublasLt.so.13: cannot open shared "
    "object file: No such file or directory"
)


@pytest.fixture
def ort_gpu_build(monkeypatch: pytest.MonkeyPatch):
    """This CPU onnxruntime dressed as onnxruntime-gpu: it lists the CUDA provider and has preload_dlls, which
    prints `printed` (as onnxruntime does for a library it cannot load); the sessions really fall back to the CPU."""
    import onnxruntime

    from engines import ort_cuda

    calls: list[str] = []

    def preload(printed: str = "") -> None:
        calls.append("preload")
        print(printed)

    def use(printed: str) -> list[str]:
        monkeypatch.setattr(onnxruntime, "preload_dlls", lambda: preload(printed))
        return calls

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ort_cuda.preload_cuda_libraries.cache_clear()
    yield use
    ort_cuda.preload_cuda_libraries.cache_clear()


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_a_cuda_session_that_fell_back_is_refused_naming_the_missing_library(tmp_path: Path, ort_gpu_build) -> None:
    from onnx import TensorProto

    from engines.ort import OrtRunner

    calls = ort_gpu_build(LIBCUBLAS_MISSING)
    one_op_model(tmp_path / "stitching.onnx", "Relu", TensorProto.FLOAT)
    with pytest.raises(ModelLoadError) as caught:
        OrtRunner(tmp_path / "stitching.onnx", device="cuda")
    assert str(caught.value) == (
        f"stitching.onnx: ONNX Runtime's CUDA provider did not start ({LIBCUBLAS_MISSING}); "
        "pip install -r requirements-gpu.txt, or choose the cpu backend"
    )
    with pytest.raises(ModelLoadError, match=r"^stitching.onnx: ONNX Runtime's CUDA provider did not start \(Failed"):
        OrtRunner(tmp_path / "stitching.onnx", device="cuda")
    assert calls == ["preload"]  # once per process, before the first CUDA session
    with OrtRunner(tmp_path / "stitching.onnx") as runner:  # the CPU device never preloads CUDA
        assert runner.backend == "onnxruntime-cpu" and calls == ["preload"]


def test_cuda_problem_names_what_the_dynamic_loader_could_not_find(ort_gpu_build, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    from engines import ort_cuda

    ort_gpu_build("")
    capi = Path(onnxruntime.__file__).parent / "capi"
    # the real loader on this CPU onnxruntime: the shared provider library loads, the CUDA one is absent
    assert ort_cuda.load_error(capi) == (
        f"{capi / ort_cuda.PROVIDER_LIBS[1]}: cannot open shared object file: No such file or directory"
    )
    monkeypatch.setattr(ort_cuda, "load_error", lambda capi: "libcudnn.so.9: cannot open shared object file")
    assert ort_cuda.cuda_problem() == "could not load its CUDA libraries: libcudnn.so.9: cannot open shared object file"
    monkeypatch.setattr(ort_cuda, "load_error", lambda capi: None)
    no_gpu = select.probe_gpu()
    if isinstance(no_gpu, str):  # the libraries load: the reason is the machine's (no driver here)
        assert ort_cuda.cuda_problem() == no_gpu
