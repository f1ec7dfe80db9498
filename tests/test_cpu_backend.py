"""The fast CPU path: denormal flushing in ONNX Runtime, the gather form of the warping module's grid samples, the
CPU graphs both CPU backends read, and the OpenVINO backend (choice, precision, cache, interrupt), on the reduced
models and tiny inputs."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import engines
from engines import select
from engines.base import ModelLoadError
from engines.layout import CPU_ONNX, NETWORK_ONNX
from engines.openvino import REQUIRED_CPU_GRAPH, OpenVinoRunner
from engines.ort import OrtRunner, session_options
from engines.select import BackendChoice, BackendUnavailable, choose_backend
from export.config import REDUCED
from export.networks import NETWORK_IO, example_inputs, input_shapes
from export.networks.warping import gather_sample_volume, sample_volume
from tests.dev import dev_module

dev_module("openvino", "openvino")  # in requirements.txt: its absence fails, never skips


def warp_feeds(seed: int = 1) -> dict[str, np.ndarray]:
    tensors = example_inputs("warping_module", REDUCED, seed=seed)
    return {n: t.numpy() for n, t in zip(NETWORK_IO["warping_module"][0], tensors)}


def denormals(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random denormal floats of both signs, made from their bits (zero exponent, non-zero mantissa): arithmetic
    would not do, as a flushing session also sets flushing on the thread that created it."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(1, 1 << 23, size=shape, dtype=np.uint32) | (rng.integers(0, 2, size=shape, dtype=np.uint32) << 31)
    return bits.view(np.float32)


def rel_err(want: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("batch", [1, 2])
def test_gather_sampling_equals_grid_sample(batch: int) -> None:
    """Every corner case of zero padding: inside, on the border, half outside, far outside."""
    gen = torch.Generator().manual_seed(0)
    volume = torch.randn(batch, 3, 4, 5, 6, generator=gen)
    grid = torch.rand(batch, 3, 7, 8, 3, generator=gen) * 3 - 1.5
    grid[0, 0, 0, :4] = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [-1.1, 0.0, 0.2], [0.3, 1.05, -0.99]])
    want, got = sample_volume(volume, grid), gather_sample_volume(volume, grid)
    assert got.shape == want.shape == (batch, 3, 3, 7, 8)
    assert float((got - want).abs().max()) <= 1e-6
    assert float(want.abs().max()) > 1 and float((want == 0).float().mean()) > 0.1  # values and zero padding both seen


def test_onnxruntime_flushes_denormals_with_an_unchanged_output(reduced_models: Path) -> None:
    """A feature volume of denormal floats, the kind that slows convolutions on CPUs that pay for them; flushed, the
    output is the one unflushed ONNX Runtime computes (the speed itself is measured by `python -m bench.cpu`)."""
    import onnxruntime as ort

    assert session_options().get_session_config_entry("session.set_denormal_as_zero") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration with key: session.set_denormal_as_zero"):
        session_options(flush_denormals=False).get_session_config_entry("session.set_denormal_as_zero")
    path = reduced_models / NETWORK_ONNX["warping_module"]
    feeds = warp_feeds()
    feeds["feature_3d"] = denormals(feeds["feature_3d"].shape)
    unflushed = ort.InferenceSession(str(path), session_options(flush_denormals=False), providers=["CPUExecutionProvider"])
    with OrtRunner(path) as runner:
        assert runner.session.get_session_options().get_session_config_entry("session.set_denormal_as_zero") == "1"
        got = runner.infer(feeds)["out"]
    want = unflushed.run(None, feeds)[0]
    assert rel_err(want, got) <= 1e-6 and float(np.abs(want).max()) > 1e-3


@pytest.mark.parametrize("network", ["warping_module", "spade_generator"])
def test_onnxruntime_on_the_cpu_reads_the_cpu_graph_when_the_folder_has_it(
    reduced_models: Path, tmp_path: Path, network: str
) -> None:
    """The CPU graph (Winograd convolutions; W with gathers) computes what the native file computes; a folder from
    an older export, without it, still runs the native file."""
    native, cpu = reduced_models / NETWORK_ONNX[network], reduced_models / CPU_ONNX[NETWORK_ONNX[network]]
    older = tmp_path / NETWORK_ONNX[network]
    shutil.copy(native, older)
    feeds = warp_feeds() if network == "warping_module" else {
        "feature": np.random.default_rng(2).standard_normal(input_shapes(network, REDUCED)["feature"]).astype(np.float32)
    }
    with OrtRunner(native) as fast, OrtRunner(older) as plain:
        assert (fast.source, plain.source) == (cpu, older)
        output = NETWORK_IO[network][1][0]
        want, got = plain.infer(feeds)[output], fast.infer(feeds)[output]
    assert got.shape == want.shape and rel_err(want, got) <= 2e-5


def test_openvino_runs_the_cpu_graphs_like_onnxruntime(reduced_models: Path, tmp_path: Path) -> None:
    path = reduced_models / NETWORK_ONNX["warping_module"]
    feeds = warp_feeds()
    with OrtRunner(path) as ort_runner:
        want = ort_runner.infer(feeds)["out"]
    with engines.open_runner(path, "openvino", engine_dir=tmp_path) as runner:  # compiles, caching in engine_dir
        assert runner.backend == "openvino-cpu f32"
        assert runner.source == reduced_models / REQUIRED_CPU_GRAPH
        assert [(s.name, s.shape) for s in runner.inputs] == [(s.name, s.shape) for s in ort_runner.inputs]
        got = runner.infer(feeds)["out"]
    assert got.shape == want.shape and rel_err(want, got) <= 1e-5
    cached = sorted(p.name for p in (tmp_path / "openvino").iterdir())
    assert cached and all(name.endswith(".blob") for name in cached)
    with OpenVinoRunner(path, cache_dir=tmp_path / "openvino") as runner:  # the second start reads the cache
        assert sorted(p.name for p in (tmp_path / "openvino").iterdir()) == cached
        np.testing.assert_array_equal(runner.infer(feeds)["out"], got)


def test_openvino_refusals_are_one_line(reduced_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(reduced_models / NETWORK_ONNX["warping_module"], folder)
    missing = f"model file {folder / REQUIRED_CPU_GRAPH} is missing; run `python -m export onnx` (with --force) to create it"
    with pytest.raises(ModelLoadError, match="^" + re.escape(missing) + "$"):
        OpenVinoRunner(folder / NETWORK_ONNX["warping_module"])
    monkeypatch.setattr("engines.openvino.cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    with pytest.raises(ModelLoadError, match=r"^this CPU has no native bf16 \(AVX512-BF16 or AMX\); choose the openvino"):
        OpenVinoRunner(reduced_models / NETWORK_ONNX["lip"], "bf16")
    with pytest.raises(ValueError, match=r"^OpenVINO precision must be one of f32, bf16, got 'fp16'$"):
        OpenVinoRunner(reduced_models / NETWORK_ONNX["lip"], "fp16")


def test_openvino_interrupt_refuses_the_next_inference(reduced_models: Path, tmp_path: Path) -> None:
    feeds = {"x": np.zeros(input_shapes("lip", REDUCED)["x"], np.float32)}
    with OpenVinoRunner(reduced_models / NETWORK_ONNX["lip"], cache_dir=tmp_path) as runner:
        assert runner.infer(feeds)["delta"].shape == (1, 63)
        runner.interrupt()
        with pytest.raises(InterruptedError, match=r"^lip.onnx: inference interrupted$"):
            runner.infer(feeds)


def test_auto_takes_openvino_on_a_cpu_when_the_folder_has_the_cpu_graphs(
    reduced_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select, "_tensorrt_problem", lambda *args: ("no NVIDIA GPU was found", ""))
    monkeypatch.setattr(select, "probe_ort_providers", lambda: ("CPUExecutionProvider",))
    monkeypatch.setattr(select, "probe_ort_cuda_problem", lambda: "onnxruntime-gpu is not installed")
    cpu_reasons = "no NVIDIA GPU was found, and ONNX Runtime's CUDA provider did not start (onnxruntime-gpu is not installed)"
    assert choose_backend("auto", reduced_models) == BackendChoice("openvino", f"OpenVINO f32 on the CPU: {cpu_reasons}.")
    assert choose_backend("openvino", reduced_models) == BackendChoice("openvino", "OpenVINO f32 on the CPU, as asked.")
    assert (select.fastest_cpu_backend(reduced_models), select.fastest_cpu_backend(tmp_path)) == ("openvino", "cpu")
    lacks = f"{tmp_path} lacks {REQUIRED_CPU_GRAPH} (export again with `python -m export onnx --force`)"
    assert choose_backend("auto", tmp_path).reason == (
        "ONNX Runtime on the CPU: no NVIDIA GPU was found, ONNX Runtime's CUDA provider did not start "
        f"(onnxruntime-gpu is not installed), and {lacks}."
    )
    with pytest.raises(BackendUnavailable, match="^" + re.escape(f"OpenVINO f32 was asked for, but {lacks}; choose")):
        choose_backend("openvino", tmp_path)
    monkeypatch.setattr("engines.openvino.cpu_capabilities", lambda: frozenset({"FP32"}))
    with pytest.raises(BackendUnavailable, match=r"^OpenVINO bf16 was asked for, but this CPU has no native bf16"):
        choose_backend("openvino-bf16", reduced_models)
