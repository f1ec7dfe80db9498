"""Shared fixtures: where the shared media lives, a reduced-width model set built once per test session, the
shared media read once (portraits, the first driving frames), video read-back, the fake virtual camera, and the
test tools of requirements-dev.txt, whose absence fails the run with the install command instead of skipping."""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Callable

import numpy as np
import pytest

from tests.dev import dev_module

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# the app's settings (remembered models folder, recent portraits) go to a throw-away folder, never the user's
os.environ["LIVEPORTRAIT_CONFIG_DIR"] = tempfile.mkdtemp(prefix="liveportrait-config-")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIVEPORTRAIT_SHARED", REPO.parent / "shared"))
MEDIA = SHARED / "media"
FIXTURES = SHARED / "fixtures"
#: the shared driving video whose frames the reduced stand-in face detector finds a face in
DRIVING_VIDEO = "d10.mp4"
#: how many of its first frames the first_frames fixture holds
DRIVING_FRAMES = 12


try:
    import pytestqt  # noqa: F401  (pytest-qt provides the qtbot fixture)
except ImportError:

    @pytest.fixture
    def qtbot() -> None:
        """Stands in for pytest-qt's fixture when the plugin is missing: the window tests fail, naming the fix."""
        dev_module("pytestqt", "pytest-qt")


@pytest.fixture(scope="session")
def rtx() -> ModuleType:
    """TensorRT-RTX: its ONNX parser and builder run without a GPU, so the default run checks every graph."""
    return dev_module("tensorrt_rtx", "tensorrt-rtx")


#: ONNX tensor element types by TensorRT's name for them
ONNX_TO_TRT_DTYPE = {1: "FLOAT", 2: "UINT8", 6: "INT32", 7: "INT64", 10: "HALF"}


def _onnx_io(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        v.name: (ONNX_TO_TRT_DTYPE[v.type.tensor_type.elem_type], tuple(d.dim_value for d in v.type.tensor_type.shape.dim))
        for v in [*graph.input, *graph.output]
    }


@pytest.fixture(scope="session")
def onnx_io() -> Callable[[Path], dict[str, tuple[str, tuple[int, ...]]]]:
    """ONNX path -> name -> (TensorRT's dtype name, shape) of its graph inputs and outputs, to compare with rtx_io."""
    return _onnx_io


@pytest.fixture(scope="session")
def rtx_io(rtx: ModuleType) -> Callable[[Path, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """(ONNX path, precision) -> name -> (dtype name, shape) of the inputs and outputs of the network TensorRT-RTX
    parses from it (after the FP16 rewrite for "fp16"): what an engine built from it takes and gives."""
    from engines.trt_build import _model_bytes, parse_onnx

    def io(path: Path, precision: str = "fp32") -> dict[str, tuple[str, tuple[int, ...]]]:
        _, network, _ = parse_onnx(rtx, _model_bytes(path, precision), path.name)
        tensors = [*map(network.get_input, range(network.num_inputs)), *map(network.get_output, range(network.num_outputs))]
        return {t.name: (t.dtype.name, tuple(t.shape)) for t in tensors}

    return io


@pytest.fixture(scope="session")
def cuda_runtime() -> ModuleType:
    """NVIDIA cuda-python's runtime bindings (they import without a GPU)."""
    return dev_module("cuda.bindings.runtime", "cuda-python")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the shared media/fixtures folder beside the repository")
    return path


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """../shared/media (portraits, driving videos, templates); skips when the folder is absent."""
    return _need(MEDIA)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures (checkpoint tensor names and shapes); skips when absent."""
    return _need(FIXTURES)


@pytest.fixture(scope="session")
def reduced_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake weights of the reduced-width architecture, in the official release layout."""
    from export.fake_weights import write_fake_weights

    weights = tmp_path_factory.mktemp("weights")
    write_fake_weights(weights, seed=0, reduced=True)
    return weights


@pytest.fixture(scope="session")
def reduced_export(reduced_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list[str]]:
    """One verified export of the reduced weights for the whole run: (models folder, verification rows, log lines).
    The export tests check it; everything else runs from its folder."""
    from export.onnx_export import export_models

    out = tmp_path_factory.mktemp("export") / "models"
    lines: list[str] = []
    rows = export_models(reduced_weights, out, verify=True, log=lines.append)
    return out, rows, lines


@pytest.fixture(scope="session")
def reduced_models(reduced_export: tuple[Path, list, list[str]]) -> Path:
    """The exported models folder (every network's ONNX plus the face models) for the reduced weights."""
    return reduced_export[0]


@pytest.fixture(scope="session")
def animator(reduced_models: Path):
    """One Animator on the reduced models and ONNX Runtime CPU, shared by the core tests."""
    from core.animator import Animator

    made = Animator(reduced_models, "cpu")
    yield made
    made.close()


def _fingerprint(nets: object, f_s: np.ndarray, x_s: np.ndarray, x_d: np.ndarray) -> np.ndarray:
    """Networks.warp_decode's stand-in: the SHA-256 of its inputs (as the networks take them) tiled into a crop."""
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a, np.float32).tobytes() for a in (f_s, x_s, x_d)))
    return np.resize(np.frombuffer(digest.digest(), np.uint8), (512, 512, 3))


@pytest.fixture
def fingerprint_warp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Animator's warp + decode (pure, and a second or more per frame here) gives a fingerprint of its inputs
    instead: a 512x512 crop that is equal exactly when (f_s, x_s, x_d) are. For tests of which sources, frames and
    options meet; everything around the networks (crop, motion, keypoints, paste-back, outputs) still runs. The
    networks themselves are checked against PyTorch by the export and animate for real in the ComfyUI node, live,
    window and render tests."""
    from core.animator import Networks

    monkeypatch.setattr(Networks, "warp_decode", _fingerprint)


@pytest.fixture
def session_animator(animator, reduced_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """main.py's commands run on the session's Animator (its sessions are opened once), after checking that the
    command asked for the test models on the CPU; the real opening is tested by the no-models and no-torch tests."""
    import core.animator

    def open_shared(models_dir: Path | None, backend: str):
        assert (models_dir, backend) == (reduced_models, "cpu")
        return animator, "ONNX Runtime on the CPU, as asked."

    monkeypatch.setattr(core.animator, "open_animator", open_shared)


@pytest.fixture(scope="session")
def load_portrait(media_dir: Path) -> Callable[[str], np.ndarray]:
    """name -> that shared portrait as RGB uint8, read once per session and read-only (copy to change it)."""
    from core.images import load_image

    @functools.cache
    def load(name: str) -> np.ndarray:
        image = load_image(media_dir / "portraits" / name)
        image.flags.writeable = False
        return image

    return load


@pytest.fixture(scope="session")
def portrait(load_portrait: Callable[[str], np.ndarray]) -> np.ndarray:
    """A real portrait (s0.jpg) as RGB uint8."""
    return load_portrait("s0.jpg")


@pytest.fixture(scope="session")
def first_frames(media_dir: Path) -> list[np.ndarray]:
    """The first DRIVING_FRAMES frames of the shared driving video as RGB uint8 (read-only), decoded once."""
    from render.offline import open_video

    frames = open_video(media_dir / "driving" / DRIVING_VIDEO).frames()
    out = [next(frames) for _ in range(DRIVING_FRAMES)]
    for frame in out:
        frame.flags.writeable = False
    return out


def _read_video(path: Path) -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


@pytest.fixture(scope="session")
def read_video() -> Callable[[Path], list[np.ndarray]]:
    """path -> every frame of a written video, decoded back as RGB uint8 (what a player would show)."""
    return _read_video


class FakeCam:
    """Same interface as pyvirtualcam.Camera; keeps the frames it was sent."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        self.width, self.height, self.fps, self.device = width, height, fps, "fake0"
        self.sent: list[np.ndarray] = []
        self.closed = False

    @classmethod
    def open(cls, width: int, height: int, fps: float) -> "FakeCam":
        return cls(width, height, fps)

    def send(self, frame: np.ndarray) -> None:
        assert frame.shape == (self.height, self.width, 3) and frame.dtype == np.uint8
        self.sent.append(frame)

    def sleep_until_next_frame(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="session")
def fake_cam() -> type[FakeCam]:
    """The fake virtual camera class; pass `fake_cam.open` where the app takes a pyvirtualcam backend."""
    return FakeCam


@pytest.fixture(scope="session")
def real_gpu():
    """(tensorrt module, GpuInfo) on a machine with an NVIDIA GPU and TensorRT; elsewhere the test skips, saying
    which of the two is missing and why."""
    from engines.base import ModelLoadError
    from engines.trt import find_gpu, import_tensorrt

    try:
        return import_tensorrt(), find_gpu()
    except ModelLoadError as exc:  # NoGpuError is one
        pytest.skip(f"needs an NVIDIA GPU with TensorRT: {exc}")


@pytest.fixture
def stubbed_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:
    """main.py's render, live and window commands with their work stubbed, to check what each is handed: `seen`
    gets render's (args, kwargs) and the window's options; live's processor is `processor` (a FakeProcessor);
    `source` is a 64x64 noise portrait."""
    import cv2

    import core.animator
    import realtime.camera
    import realtime.live
    import realtime.loop
    import render.offline
    import ui.app
    from realtime.live_api import FakeProcessor

    seen: dict[str, object] = {}
    processor = FakeProcessor()
    monkeypatch.setattr(core.animator, "open_animator", lambda models, backend: (SimpleNamespace(backend="x"), "stub"))
    monkeypatch.setattr(render.offline, "render", lambda *args, **kwargs: (
        seen.setdefault("render", (args, kwargs)), SimpleNamespace(summary=lambda: "0 frames"))[1])
    monkeypatch.setattr(realtime.live, "make_processor", lambda models, backend: processor)
    monkeypatch.setattr(realtime.camera, "open_camera", lambda spec: None)
    monkeypatch.setattr(realtime.loop, "run_headless", lambda *a, **k: SimpleNamespace(line=lambda: "", sink_error=""))
    monkeypatch.setattr(ui.app, "run_app", lambda *args, **kwargs: seen.setdefault("window", kwargs["options"]) and 0)
    source = tmp_path / "portrait.png"
    cv2.imwrite(str(source), np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    return SimpleNamespace(seen=seen, processor=processor, source=source)


@pytest.fixture
def video(media_dir: Path) -> str:
    """The shared driving video the window tests use as their camera."""
    return str(media_dir / "driving" / "d11.mp4")


@pytest.fixture
def make_window(qtbot, tmp_path: Path, video: str, fake_cam) -> Callable:
    """make_window(factory=None, camera=None, **MainWindow options): a shown window on the fake virtual camera whose
    processor has loaded (or failed)."""
    from tests.windows import Factory, loaded
    from ui.main_window import MainWindow

    def make(factory: Factory | None = None, camera: str | None = None, **kwargs) -> MainWindow:
        window = MainWindow(
            factory or Factory(), tmp_path / "models", "cpu", tmp_path / "config" / "settings.json",
            camera=camera or video, vcam_backend=kwargs.pop("vcam_backend", fake_cam.open), **kwargs,
        )
        qtbot.addWidget(window)
        window.show()
        loaded(qtbot, window)
        return window

    return make
