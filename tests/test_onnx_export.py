"""ONNX export: every file of the models folder, its verification against PyTorch, SPADE folding, errors."""
from __future__ import annotations

import copy
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.checkpoints import CheckpointError, load_network
from export.config import OFFICIAL, REDUCED, ArchConfig
from export.fake_weights import write_fake_weights
from export import onnx_export
from engines.layout import CHECKPOINTS, CPU_ONNX, FACE_INPUT_SHAPES, FACE_MODELS, FACE_ONNX, MODEL_FILES, NETWORK_ONNX
from export.networks import NETWORK_IO, NETWORK_NAMES, example_inputs, fold_spectral_norm, input_shapes
from export.onnx_export import (
    ExportError,
    VerificationError,
    VerifyRow,
    check_rows,
    export_models,
    export_network,
    verify_network,
)

#: ops that computing sigma = u . (W v) and W / sigma would add to the generator graph
SPECTRAL_NORM_OPS = {"MatMul", "Div", "ReduceL2"}


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in value_info.type.tensor_type.shape.dim)


def _check_models_folder(out: Path, rows: list[VerifyRow], cfg: ArchConfig) -> None:
    """Every contract file exists, checks, has static contract I/O; every network output verified."""
    files = sorted(p.name for p in out.iterdir() if p.is_file())  # the session's runs may have cached engines there
    assert files == sorted([*MODEL_FILES.values(), *CPU_ONNX.values()])
    for name, file_name in NETWORK_ONNX.items():
        model = onnx.load(str(out / file_name))
        onnx.checker.check_model(model, full_check=True)
        inputs = {i.name: _dims(i) for i in model.graph.input}
        assert inputs == input_shapes(name, cfg)
        assert tuple(o.name for o in model.graph.output) == NETWORK_IO[name][1]
        assert all(all(d > 0 for d in _dims(o)) for o in model.graph.output), f"{name} has dynamic output dims"
    expected = [(n, o) for n in NETWORK_NAMES for o in NETWORK_IO[n][1]]
    for name in ("warping_module", "spade_generator"):
        output = NETWORK_IO[name][1][0]
        expected.insert(expected.index((name, output)) + 1, (f"{name} (CPU graph)", output))
    assert [(r.network, r.output) for r in rows] == expected
    cpu_warp, cpu_generator = (_ops(out / CPU_ONNX[NETWORK_ONNX[n]]) for n in ("warping_module", "spade_generator"))
    assert "GridSample" not in cpu_warp
    # the reduced networks' 3x3 convolutions of 32x32 pixels or more are Winograd products: W's hourglass levels
    # at 64x64 and 32x32, its decoder convolution and `third`; all of G's but the 1x1 shortcuts. Each keeps one
    # Conv (its input transform); W's mask convolution, in the Fourier domain, keeps none
    assert _ops(out / NETWORK_ONNX["warping_module"])["Conv"] - cpu_warp["Conv"] == 1
    assert all(row.rel_err < 1e-4 for row in rows), [row for row in rows if row.rel_err >= 1e-4]
    assert not _ops(out / NETWORK_ONNX["spade_generator"]).keys() & SPECTRAL_NORM_OPS


@pytest.fixture(scope="module")
def exported(reduced_export: tuple[Path, list[VerifyRow], list[str]]) -> tuple[Path, list[VerifyRow], list[str]]:
    """The run's one verified export (conftest), as `python -m export onnx` writes it."""
    return reduced_export


def test_export_writes_and_verifies_every_model(exported: tuple[Path, list[VerifyRow], list[str]]) -> None:
    out, rows, lines = exported
    _check_models_folder(out, rows, REDUCED)
    shapes = {o.name: _dims(o) for o in onnx.load(str(out / "spade_generator.onnx")).graph.output}
    assert shapes == {"image": (1, 3, 512, 512)}
    shapes = {o.name: _dims(o) for o in onnx.load(str(out / "motion_extractor.onnx")).graph.output}
    assert shapes == {"pitch": (1, 66), "yaw": (1, 66), "roll": (1, 66), "t": (1, 3), "exp": (1, 63),
                      "scale": (1, 1), "kp": (1, 63)}


def test_verification_table_is_logged(exported: tuple[Path, list[VerifyRow], list[str]]) -> None:
    _, rows, lines = exported
    table = lines[-1].splitlines()
    assert table[0] == "| network | output | max abs err | rel err |"
    assert len(table) == 2 + len(rows) == 2 + 15
    assert table[2 + 8].startswith("| warping_module | out | ")
    assert table[2 + 9].startswith("| warping_module (CPU graph) | out | ")
    assert table[2 + 11].startswith("| spade_generator (CPU graph) | image | ")
    assert sum(line.startswith("exported ") for line in lines) == len(NETWORK_NAMES) + len(CPU_ONNX)


def test_face_models_get_static_inputs_and_compute_what_the_release_files_compute(
    exported: tuple[Path, list[VerifyRow], list[str]], reduced_weights: Path
) -> None:
    out, _, _ = exported
    rng = np.random.default_rng(3)
    for name, rel in FACE_MODELS.items():
        static, original = onnx.load(str(out / FACE_ONNX[name])), onnx.load(str(reduced_weights / rel))
        assert [_dims(i) for i in static.graph.input] == [FACE_INPUT_SHAPES[name]]
        assert all(all(d > 0 for d in _dims(o)) for o in static.graph.output), f"{name} has dynamic output dims"
        assert [n.op_type for n in static.graph.node] == [n.op_type for n in original.graph.node]
        image = rng.random(FACE_INPUT_SHAPES[name], dtype=np.float32) * 255
        runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (out / FACE_ONNX[name], reduced_weights / rel)]
        have, want = (r.run(None, {r.get_inputs()[0].name: image}) for r in runs)
        for a, b in zip(have, want):
            np.testing.assert_array_equal(a, b)
    det = onnx.load(str(out / FACE_ONNX["det_10g"]))
    assert [_dims(o) for o in det.graph.output][:3] == [(8192, 1), (2048, 1), (512, 1)]  # the 512 letterbox


def test_a_face_model_of_another_input_size_is_refused(reduced_weights: Path, tmp_path: Path) -> None:
    source = reduced_weights / FACE_MODELS["2d106det"]
    with pytest.raises(ExportError) as info:
        onnx_export.static_face_model(source, (1, 3, 256, 256))
    assert str(info.value) == (
        f"face model {source} takes data [1, 3, 192, 192], not one image input of shape [1, 3, 256, 256]; "
        "it is not the release file: delete it and get the weights again"
    )


def test_spade_fold_removes_sigma_math_and_keeps_output(reduced_weights: Path, tmp_path: Path) -> None:
    unfolded = load_network(reduced_weights, "spade_generator")
    folded = fold_spectral_norm(copy.deepcopy(unfolded))
    trace = example_inputs("spade_generator", REDUCED, seed=0)
    export_network(unfolded, "spade_generator", trace, tmp_path / "unfolded.onnx")
    export_network(folded, "spade_generator", trace, tmp_path / "folded.onnx")

    # 8 blocks: 6 middle (conv_0, conv_1) + 2 up (conv_0, conv_1, conv_s) = 18 spectral-normed convs,
    # each adding W @ v and u . (W v) and one division
    assert _ops(tmp_path / "unfolded.onnx")["MatMul"] == 2 * 18
    assert _ops(tmp_path / "unfolded.onnx")["Div"] == 18
    assert not _ops(tmp_path / "folded.onnx").keys() & SPECTRAL_NORM_OPS
    initializers = {i.name for i in onnx.load(str(tmp_path / "folded.onnx")).graph.initializer}
    assert not any(name.endswith(("weight_orig", "weight_u", "weight_v")) for name in initializers)
    assert (tmp_path / "folded.onnx").stat().st_size < (tmp_path / "unfolded.onnx").stat().st_size

    # folding is exact: the folded module computes what the spectral-normed one does, on the same kernels
    check = example_inputs("spade_generator", REDUCED, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(folded(*check), unfolded(*check), rtol=0, atol=1e-6)
    # and the folded file computes it in ONNX Runtime within the export's bar (its kernels round differently)
    (row,) = verify_network(unfolded, "spade_generator", tmp_path / "folded.onnx", check)
    assert row.rel_err < 1e-5


def test_verification_catches_a_wrong_file(reduced_weights: Path, tmp_path: Path) -> None:
    lip = load_network(reduced_weights, "lip")
    export_network(lip, "lip", example_inputs("lip", REDUCED, seed=0), tmp_path / "lip.onnx")
    other = copy.deepcopy(lip)
    other.mlp[0].bias.data += 0.5
    (row,) = verify_network(other, "lip", tmp_path / "lip.onnx", example_inputs("lip", REDUCED, seed=1))
    assert row.rel_err > 1e-2


def test_check_rows_names_every_failing_output() -> None:
    rows = [VerifyRow("lip", "delta", 1e-9, 1e-8), VerifyRow("warping_module", "out", 0.01, 2.5e-3),
            VerifyRow("eye", "delta", 0.3, 0.5)]
    with pytest.raises(VerificationError) as info:
        check_rows(rows)
    assert str(info.value) == (
        "ONNX Runtime disagrees with PyTorch for warping_module/out (rel err 2.5e-03), eye/delta (rel err 5.0e-01) "
        "above 0.0001; the export is wrong, do not use these files"
    )
    check_rows(rows[:1])


def test_refuses_to_overwrite(exported: tuple[Path, list[VerifyRow], list[str]], reduced_weights: Path) -> None:
    out, _, _ = exported
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ExportError) as info:
        export_models(reduced_weights, out)
    assert str(info.value) == (
        f"{out} already holds 12 model file(s) ({', '.join([*MODEL_FILES.values(), *CPU_ONNX.values()])}); "
        "pass --force to replace them"
    )
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_unwritable_out_dir(reduced_weights: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "models"  # tests run as root, so a chmod-ed folder would still be writable
    with pytest.raises(ExportError) as info:
        export_models(reduced_weights, out)
    assert str(info.value) == (
        f"cannot write to the models folder {out} (Not a directory); choose a writable folder with --out"
    )


def test_cli_prints_one_line_error(reduced_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from export.__main__ import main

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["onnx", "--weights", str(reduced_weights), "--out", str(blocker / "m")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot write to the models folder {blocker / 'm'} (Not a directory); " \
                  "choose a writable folder with --out\n"


def test_a_failed_verification_leaves_the_models_folder_as_it_was(
    reduced_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    out.mkdir()
    for name in MODEL_FILES.values():
        (out / name).write_bytes(b"the user's working file")
    rows = iter([VerifyRow("lip", "delta", 0.3, 0.5)])
    monkeypatch.setattr(onnx_export, "verify_network", lambda *args: [next(rows, VerifyRow("x", "y", 0, 0))])

    def write_without_tracing(*args: object) -> list[VerifyRow]:  # only the folder is at stake, not the graphs
        next(a for a in args if isinstance(a, Path)).write_bytes(b"new")
        return []

    monkeypatch.setattr(onnx_export, "export_network", write_without_tracing)
    monkeypatch.setattr(onnx_export, "export_cpu_graph", lambda *args: args[4].write_bytes(b"new") and [])
    with pytest.raises(VerificationError, match=r"^ONNX Runtime disagrees with PyTorch for lip/delta"):
        export_models(reduced_weights, out, overwrite=True, log=lambda line: None)
    assert sorted(p.name for p in out.iterdir()) == sorted(MODEL_FILES.values())  # no staging folder left
    assert all((out / name).read_bytes() == b"the user's working file" for name in MODEL_FILES.values())


def test_an_invalid_exported_graph_is_a_one_line_export_error(
    reduced_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from export.__main__ import main

    def invalid(*args: object, **kwargs: object) -> None:
        raise onnx.checker.ValidationError("Nodes in a graph must be topologically sorted, however input 'a'\n==> Context")

    monkeypatch.setattr(onnx.checker, "check_model", invalid)
    lip = load_network(reduced_weights, "lip")
    message = (
        "lip: the exported ONNX graph is invalid (Nodes in a graph must be topologically sorted, however input 'a'); "
        "install the torch and onnx versions of requirements-export.txt and export again"
    )
    with pytest.raises(ExportError, match="^" + re.escape(message) + "$"):
        export_network(lip, "lip", example_inputs("lip", REDUCED, seed=0), tmp_path / "lip.onnx")
    assert main(["onnx", "--weights", str(reduced_weights), "--out", str(tmp_path / "models")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: appearance_feature_extractor: the exported ONNX graph is invalid (Nodes in a")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list((tmp_path / "models").iterdir()) == []  # nothing half-written where the app looks


def test_missing_weights_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"^weights directory .*nowhere does not exist; get the weights with"):
        export_models(tmp_path / "nowhere", tmp_path / "models")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("missing", [CHECKPOINTS["warping_module"], FACE_MODELS["det_10g"]])
def test_missing_weight_file(reduced_weights: Path, tmp_path: Path, missing: str) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(reduced_weights, weights)
    (weights / missing).unlink()
    kind = "checkpoint" if missing.endswith(".pth") else "face model"
    fix = f"get the weights with `python -m export download --to {weights}`"
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{kind} {weights / missing} is missing; {fix}")):
        export_models(weights, tmp_path / "models")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.slow
def test_official_export_verifies(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    write_fake_weights(weights, seed=0, reduced=False)
    rows = export_models(weights, tmp_path / "models", verify=True, log=lambda line: None)
    _check_models_folder(tmp_path / "models", rows, OFFICIAL)
    sizes = {name: (tmp_path / "models" / f).stat().st_size for name, f in NETWORK_ONNX.items()}
    assert 100e6 < sizes["warping_module"] < 300e6 and 100e6 < sizes["spade_generator"] < 300e6
