"""Engine building without a GPU: the FP16 rewrite, TensorRT-RTX's ONNX parser and builder, the engine cache."""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from engines.trt import NO_GPU_REASONS, GpuInfo, NoGpuError, trt_logger
from engines import trt_build
from engines.trt_build import (
    RECIPE,
    TrtBuildError,
    TrtParseError,
    build_engines,
    build_plan,
    builder_config,
    check_parses,
    engine_key,
    engine_precision,
    ensure_engine,
    fp32_nodes,
    mixed_fp16,
)
from engines.trt_cache import EngineKey, engine_path, file_sha256, key_path, stale_reason
from tests.onnx_models import save, warp_feeds, warp_like

GPU = GpuInfo("NVIDIA Test GPU 4090", (8, 9))


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_fp32_nodes_are_the_grid_sample_and_the_ops_computing_its_grid() -> None:
    graph = warp_like().graph
    pinned = sorted(graph.node[i].output[0] for i in fp32_nodes(graph))
    # the mask conv stops the walk: convolutions are what FP16 is for
    assert pinned == ["grid", "kp_mean", "mask", "mask_last", "moved", "offset", "sampled"]


def test_mixed_fp16_is_valid_onnx_with_float32_io_grid_and_resize_scales() -> None:
    model = mixed_fp16(warp_like())
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: t.data_type for t in model.graph.initializer}
    assert inits["w_feat"] == inits["w_mask"] == inits["w_out"] == TensorProto.FLOAT16
    assert inits["identity_grid"] == inits["scales"] == TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]] == [TensorProto.FLOAT] * 3
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    sample = next(n for n in model.graph.node if n.op_type == "GridSample")
    assert [types[name] for name in sample.input] == [TensorProto.FLOAT, TensorProto.FLOAT]
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert types[conv.output[0]] == TensorProto.FLOAT16


def test_mixed_fp16_matches_fp32_to_half_precision() -> None:
    feeds = warp_feeds()
    full, half = _run(warp_like(), feeds), _run(mixed_fp16(warp_like()), feeds)
    assert half.dtype == np.float32
    error = float(np.abs(full - half).max())
    assert 0 < error < 2e-2  # it really ran in FP16, and FP16 is close enough


def test_engine_precision_keeps_coordinate_models_in_fp32() -> None:
    assert engine_precision("warping_module", "fp16") == "fp16"
    assert engine_precision("motion_extractor", "fp16") == "fp32"
    assert engine_precision("landmark", "fp16") == "fp32"
    assert engine_precision("spade_generator", "fp32") == "fp32"
    with pytest.raises(ValueError, match=r"^precision must be one of fp16, fp32, got 'int8'$"):
        engine_precision("spade_generator", "int8")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_rtx_parses_the_5d_grid_sample_natively(rtx, tmp_path: Path, precision: str) -> None:
    path = save(warp_like(), tmp_path / "warping_module.onnx")
    _, network, _ = trt_build.parse_onnx(rtx, trt_build._model_bytes(path, precision), path.name)
    types = [network.get_layer(i).type for i in range(network.num_layers)]
    assert types.count(rtx.LayerType.GRID_SAMPLE) == 1
    assert check_parses(path, rtx, precision) == network.num_layers


def test_tensorrt_rtx_builds_an_engine_and_a_timing_cache(rtx, rtx_io, onnx_io, tmp_path: Path) -> None:
    path = save(warp_like(), tmp_path / "warping_module.onnx")
    cache = tmp_path / "cache" / "timing.cache"
    build_plan(rtx, path, "fp16", cache, progress=False)  # TrtBuildError when TensorRT cannot build it
    assert rtx_io(path, "fp16") == onnx_io(path) == {
        "feature": ("FLOAT", (1, 4, 4, 8, 8)), "kp": ("FLOAT", (1, 3, 3)), "image": ("FLOAT", (1, 8, 16, 16)),
    }  # the engine takes and gives float32 of the ONNX shapes: the FP16 rewrite stays inside
    assert cache.stat().st_size > 0


def test_fp32_engines_turn_off_tf32_and_fp16_engines_keep_the_default(rtx) -> None:
    builder = rtx.Builder(trt_logger(rtx))
    assert builder.create_builder_config().get_flag(rtx.BuilderFlag.TF32)  # TensorRT's default: on
    assert not builder_config(rtx, builder, "fp32").get_flag(rtx.BuilderFlag.TF32)
    assert builder_config(rtx, builder, "fp16").get_flag(rtx.BuilderFlag.TF32)


def test_unsupported_op_fails_the_check_with_the_node_named(rtx, tmp_path: Path) -> None:
    node = helper.make_node("FancyWarp", ["x"], ["y"], domain="org.example")
    graph = helper.make_graph(
        [node], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("org.example", 1)])
    path = save(model, tmp_path / "bad.onnx")
    with pytest.raises(TrtParseError) as caught:
        check_parses(path, rtx)
    message = str(caught.value)
    assert message.startswith("bad.onnx: TensorRT's ONNX parser rejected it: node 0 '' (FancyWarp): ")
    assert message.endswith("re-export it with `python -m export onnx` (opset 20) or install a TensorRT that supports these ops")
    assert "\n" not in message


def test_every_exported_model_parses_with_tensorrt_rtx(rtx, rtx_io, onnx_io, reduced_models: Path) -> None:
    from engines.layout import MODEL_FILES

    for name in MODEL_FILES.values():
        path = reduced_models / name
        check_parses(path, rtx, "fp32")  # TrtParseError names the node TensorRT cannot take
        io = onnx_io(path)
        assert all(dtype in ("FLOAT", "UINT8") and all(shape) for dtype, shape in io.values()), (name, io)  # static
        assert rtx_io(path, "fp16") == io, name  # the FP16 rewrite parses, with float32 inputs and outputs
    # TrtBuildError when TensorRT cannot build: the 5-D grid sample, and the face models, exported with static
    # inputs, so they need no optimisation profile
    build_plan(rtx, reduced_models / "warping_module.onnx", "fp16", progress=False)
    for face in ("det_10g", "2d106det", "landmark"):
        build_plan(rtx, reduced_models / f"{face}.onnx", "fp32", progress=False)


def test_fp16_rewrite_of_the_exported_networks_stays_close_to_fp32(reduced_models: Path) -> None:
    """The rewritten reduced networks run in ONNX Runtime CPU: FP16 error is small next to the outputs' size."""
    from export.config import REDUCED
    from export.networks import NETWORK_IO, example_inputs

    for name in ("appearance_feature_extractor", "warping_module", "spade_generator"):
        model = onnx.load(str(reduced_models / f"{name}.onnx"))
        feeds = {n: t.numpy() for n, t in zip(NETWORK_IO[name][0], example_inputs(name, REDUCED, seed=2))}
        full, half = _run(model, feeds), _run(mixed_fp16(model), feeds)
        assert half.dtype == np.float32 and half.shape == full.shape
        error = float(np.abs(full - half).max()) / float(np.abs(full).max())
        assert 0 < error < 2e-2, (name, error)  # it really ran in FP16, and stays within half precision


def _models_dir(tmp_path: Path, seed: int = 0) -> Path:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    save(warp_like(seed), models / "warping_module.onnx")
    save(warp_like(seed), models / "motion_extractor.onnx")
    return models


def test_build_engines_caches_by_key_and_rebuilds_when_the_onnx_changes(rtx, tmp_path: Path) -> None:
    models, out, log = _models_dir(tmp_path), tmp_path / "engines", []
    engines = build_engines(models, out, "fp16", log.append, trt=rtx, gpu=GPU)
    folder = out / f"nvidia-test-gpu-4090-sm89-trt{rtx.__version__}"
    assert engines == [folder / "motion_extractor.fp32.engine", folder / "warping_module.fp16.engine"]
    key = json.loads(key_path(engines[1]).read_text())
    assert key["gpu"] == GPU.name and key["compute_capability"] == "8.9" and key["precision"] == "fp16"
    assert key["recipe"] == RECIPE and key["onnx_sha256"] == file_sha256(models / "warping_module.onnx")
    assert sum("building" in line for line in log) == 2

    log.clear()
    stamps = [p.stat().st_mtime_ns for p in engines]
    assert build_engines(models, out, "fp16", log.append, trt=rtx, gpu=GPU) == engines
    assert [p.stat().st_mtime_ns for p in engines] == stamps
    assert sum("up to date" in line for line in log) == 2

    log.clear()
    save(warp_like(seed=5), models / "warping_module.onnx")
    build_engines(models, out, "fp16", log.append, trt=rtx, gpu=GPU)
    assert any(
        line == "warping_module: building the fp16 engine (the ONNX file changed since it was built); "
        "this takes a while, once per GPU" for line in log
    )
    assert sum("up to date" in line for line in log) == 1


def test_stale_reason_names_what_differs(tmp_path: Path) -> None:
    key = EngineKey("GPU A", "8.6", "11.4.0", "fp16", 3, "aa" * 32)
    engine = engine_path(tmp_path, "spade_generator", key)
    assert stale_reason(engine, key) == "no engine yet"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"plan")
    assert stale_reason(engine, key) == "its key file is missing or unreadable"
    key_path(engine).write_text(json.dumps({**key.__dict__, "tensorrt": "11.2.0", "gpu": "GPU B"}))
    assert stale_reason(engine, key) == "it was built for a different gpu, tensorrt"
    key_path(engine).write_text(json.dumps({**key.__dict__, "recipe": 2}))  # an engine from before a recipe change
    assert stale_reason(engine, key) == "the build recipe (FP16 rewrite) changed since it was built"
    key_path(engine).write_text(json.dumps({k: v for k, v in key.__dict__.items() if k != "recipe"}))  # older key
    assert stale_reason(engine, key) == "the build recipe (FP16 rewrite) changed since it was built"
    key_path(engine).write_text(json.dumps(key.__dict__))
    assert stale_reason(engine, key) is None


def test_engine_key_derives_the_precision_and_hashes_each_file_version_once(tmp_path: Path, monkeypatch) -> None:
    from engines import trt_cache

    path = save(warp_like(), tmp_path / "motion_extractor.onnx")
    hashed: list[str] = []
    sha256 = trt_cache.hashlib.sha256
    monkeypatch.setattr(trt_cache.hashlib, "sha256", lambda: hashed.append("x") or sha256())
    key = engine_key(path, GPU, "11.4.0", "fp16")
    assert key == EngineKey(GPU.name, "8.9", "11.4.0", "fp32", RECIPE, sha256(path.read_bytes()).hexdigest())
    assert engine_key(path, GPU, "11.4.0", "fp32") == key and len(hashed) == 1  # cached by path, size, mtime
    save(warp_like(seed=4), path)
    assert engine_key(path, GPU, "11.4.0", "fp16").onnx_sha256 != key.onnx_sha256 and len(hashed) == 2


class FakeConfig:
    """A builder config whose timing caches are the bytes they were made from; b"corrupt" is refused the way
    TensorRT may refuse it: `mode` "none" returns no cache, "raise" raises, "reject" makes set_timing_cache fail."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.cache: object = None

    def create_timing_cache(self, data: bytes) -> object:
        if data == b"corrupt" and self.mode == "none":
            return None
        if data == b"corrupt" and self.mode == "raise":
            raise RuntimeError("Failed to deserialize timing cache")
        return SimpleNamespace(data=data)

    def set_timing_cache(self, cache: SimpleNamespace, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return not (cache.data == b"corrupt" and self.mode == "reject")


@pytest.mark.parametrize("mode", ["none", "raise", "reject"])
def test_a_corrupt_timing_cache_is_logged_and_replaced_by_an_empty_one(tmp_path: Path, mode: str, caplog) -> None:
    path = tmp_path / "timing.cache"
    path.write_bytes(b"corrupt")
    config = FakeConfig(mode)
    with caplog.at_level(logging.WARNING):
        cache = trt_build._timing_cache(config, path)
    assert cache.data == b"" and config.cache is cache
    assert f"timing cache {path} is unreadable or from another TensorRT/GPU; starting an empty one" in caplog.text
    path.write_bytes(b"good cache")
    assert trt_build._timing_cache(FakeConfig(mode), path).data == b"good cache"


def test_threads_asking_for_the_same_engine_build_it_once(rtx, tmp_path: Path) -> None:
    """The window's model loading and a render thread can want engines at the same time: one build, one cache."""
    models, out, log = _models_dir(tmp_path), tmp_path / "engines", []
    with ThreadPoolExecutor(4) as pool:
        engines = list(pool.map(
            lambda _: ensure_engine(models / "warping_module.onnx", out, "fp16", log.append, trt=rtx, gpu=GPU), range(4)
        ))
    assert len(set(engines)) == 1 and engines[0].stat().st_size > 1000
    assert sum("building" in line for line in log) == 1 and sum("up to date" in line for line in log) == 3
    assert list(engines[0].parent.glob("*.partial")) == []


def test_build_with_a_truncated_timing_cache_rewrites_it(rtx, tmp_path: Path) -> None:
    path = save(warp_like(), tmp_path / "warping_module.onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x00" * 7)
    assert len(build_plan(rtx, path, "fp32", cache, progress=False)) > 1000
    assert cache.read_bytes() != b"\x00" * 7 and list(tmp_path.glob("*.partial")) == []


def test_a_model_with_dynamic_inputs_says_to_re_export(rtx, tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "H", "W"])],
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "det_10g.onnx")
    with pytest.raises(TrtBuildError) as caught:
        build_plan(rtx, path, "fp32", progress=False)
    assert str(caught.value) == (
        "det_10g: input 'x' has dynamic dims (1, 3, -1, -1); engines are static: "
        "re-export the models folder with `python -m export onnx --force`"
    )


def test_build_engines_without_a_gpu_says_so(rtx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def old_driver() -> GpuInfo:
        raise NoGpuError(NO_GPU_REASONS["cudaErrorInsufficientDriver"])

    monkeypatch.setattr(trt_build, "find_gpu", old_driver)
    with pytest.raises(TrtBuildError, match=r"^no NVIDIA driver, or one too old for CUDA 13 \(it needs driver 580 or newer\): "
                       r"TensorRT engines are built on the GPU that runs them;"):
        build_engines(_models_dir(tmp_path), tmp_path / "engines", trt=rtx)


def test_build_engines_on_a_folder_without_models_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(TrtBuildError) as caught:
        build_engines(tmp_path, tmp_path / "engines", gpu=GPU)
    assert str(caught.value) == (
        f"{tmp_path} holds none of the model files; run `python -m export onnx --out {tmp_path}` first"
    )


def test_image_op_engines_are_built_at_a_low_optimisation_level_and_announced(
    rtx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crop/paste engines are built whenever a new image size shows up, so at IMAGE_OP_LEVEL (TensorRT's default is
    3) and with the build line sent to `announce` (the renderer makes it a warning); networks keep the default."""
    from engines.image_ops import write_image_op

    assert trt_build.IMAGE_OP_LEVEL <= 1
    levels: dict[str, int] = {}
    config_of = trt_build.builder_config

    def spy(trt, builder, precision, level=None):
        config = config_of(trt, builder, precision, level)
        levels[precision + (" op" if level is not None else "")] = config.builder_optimization_level
        return config

    monkeypatch.setattr(trt_build, "builder_config", spy)
    crop = write_image_op(tmp_path / "image_ops", "crop", 24, 32)
    log, announced = [], []
    engine = ensure_engine(crop, tmp_path / "engines", "fp32", log.append, trt=rtx, gpu=GPU, announce=announced.append)
    assert engine.stat().st_size > 0 and levels == {"fp32 op": trt_build.IMAGE_OP_LEVEL}
    assert announced == ["crop_24x32: building the fp32 engine (no engine yet); a few seconds, once per image size"]
    assert not any("building" in line for line in log)
    ensure_engine(crop, tmp_path / "engines", "fp32", log.append, trt=rtx, gpu=GPU, announce=announced.append)
    assert len(announced) == 1  # cached: nothing to announce
    levels.clear()
    ensure_engine(save(warp_like(), tmp_path / "warping_module.onnx"), tmp_path / "engines", "fp32", log.append, trt=rtx, gpu=GPU)
    assert levels == {"fp32": 3}  # TensorRT's default, untouched
    assert trt_build.optimization_level("paste_1080x1920") == trt_build.IMAGE_OP_LEVEL
    assert trt_build.optimization_level("spade_generator") is None and trt_build.optimization_level("crop_1x") is None


def test_a_failed_build_gives_its_own_error_not_another_threads(rtx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT logs an error on another thread (a stale engine failing to deserialise) after the build's own: the
    build's message still names its own error."""
    import threading

    class Builder:
        def __init__(self, logger) -> None:
            self.logger, self.real = logger, rtx.Builder(logger)

        def __getattr__(self, name: str):
            return getattr(self.real, name)

        def build_serialized_network(self, network, config):
            self.logger.log(rtx.ILogger.ERROR, "Error Code 10: could not find any implementation for node grid")
            other = threading.Thread(target=self.logger.log, args=(rtx.ILogger.ERROR, "Serialization assertion failed"))
            other.start()
            other.join()
            return None

    trt = SimpleNamespace(**{k: getattr(rtx, k) for k in dir(rtx) if not k.startswith("_")})
    trt.Builder = Builder
    with pytest.raises(TrtBuildError) as caught:
        build_plan(trt, save(warp_like(), tmp_path / "warping_module.onnx"), "fp32", progress=False)
    assert str(caught.value) == (
        "warping_module: TensorRT failed to build the engine (Error Code 10: could not find any implementation for "
        "node grid); try --fp32 or a newer TensorRT"
    )
