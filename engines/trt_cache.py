"""Engine cache: where an engine lives and whether it is still the right one.

A TensorRT plan only runs on the GPU model and TensorRT version that built it, and only matches the ONNX it was
built from, and the engine also depends on how we turn the ONNX into a network (the FP16 rewrite: its `recipe`
version). So engines live in a folder named after GPU + compute capability + TensorRT version, each beside a
JSON file holding the full key (with the ONNX file's sha256). Any difference means rebuild: a stale engine is
never loaded.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from engines.files import atomic_write

#: default engine cache, inside the models folder
ENGINE_DIR_NAME = "engines"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on."""

    gpu: str
    compute_capability: str
    tensorrt: str
    precision: str
    #: version of the build recipe (engines.trt_build.RECIPE): the FP16 rewrite and which models stay FP32
    recipe: int
    onnx_sha256: str

    @property
    def folder(self) -> str:
        """One folder per GPU model and TensorRT version, e.g. 'nvidia-geforce-rtx-4090-sm89-trt11.4.0.106'."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "gpu"
        return f"{gpu}-sm{self.compute_capability.replace('.', '')}-trt{self.tensorrt}"


def default_engine_dir(models_dir: Path) -> Path:
    return Path(models_dir) / ENGINE_DIR_NAME


#: sha256 by (resolved path, size, mtime_ns): the models are ~600 MB, and every TensorRT start would hash them
#: twice (backend choice, then each engine lookup)
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256, hashed again only when its size or modification time changed."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def engine_path(cache_dir: Path, model: str, key: EngineKey) -> Path:
    """<cache>/<gpu-sm-trt>/<model>.<precision>.engine"""
    return Path(cache_dir) / key.folder / f"{model}.{key.precision}.engine"


def key_path(engine: Path) -> Path:
    return engine.with_suffix(".json")


def stale_reason(engine: Path, key: EngineKey) -> str | None:
    """None when the cached engine matches `key`; otherwise a short phrase saying why it must be (re)built."""
    if not engine.is_file():
        return "no engine yet"
    try:
        stored = json.loads(key_path(engine).read_text())
    except (OSError, ValueError):
        return "its key file is missing or unreadable"
    changed = [f.name for f in fields(EngineKey) if stored.get(f.name) != getattr(key, f.name)]
    if not changed:
        return None
    if changed == ["onnx_sha256"]:
        return "the ONNX file changed since it was built"
    if changed == ["recipe"]:
        return "the build recipe (FP16 rewrite) changed since it was built"
    return "it was built for a different " + ", ".join(name.replace("_", " ") for name in changed)


def store_engine(engine: Path, key: EngineKey, plan: bytes) -> None:
    """Write the plan, then its key; both atomically, so an interrupted build never looks finished."""
    atomic_write(engine, plan)
    atomic_write(key_path(engine), json.dumps(asdict(key), indent=2).encode())


def forget_engine(engine: Path) -> None:
    """Drop an engine that failed to load, so the next lookup rebuilds it."""
    for path in (key_path(engine), engine):
        path.unlink(missing_ok=True)
