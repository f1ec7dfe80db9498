"""Shared fixtures: where the shared media lives, and a reduced-width model set built once per test session."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# the app's settings (remembered models folder, recent portraits) go to a throw-away folder, never the user's
os.environ["LIVEPORTRAIT_CONFIG_DIR"] = tempfile.mkdtemp(prefix="liveportrait-config-")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIVEPORTRAIT_SHARED", REPO.parent / "shared"))
MEDIA = SHARED / "media"
FIXTURES = SHARED / "fixtures"


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
def reduced_models(reduced_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported models folder (every network's ONNX plus the face models) for the reduced weights."""
    from export.onnx_export import export_models

    out = tmp_path_factory.mktemp("models")
    export_models(reduced_weights, out, verify=False)
    return out


@pytest.fixture(scope="session")
def animator(reduced_models: Path):
    """One Animator on the reduced models and ONNX Runtime CPU, shared by the core tests."""
    from core.animator import Animator

    made = Animator(reduced_models, "cpu")
    yield made
    made.close()


@pytest.fixture(scope="session")
def portrait(media_dir: Path):
    """A real portrait (s0.jpg) as RGB uint8."""
    from core.images import load_image

    return load_image(media_dir / "portraits" / "s0.jpg")


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
