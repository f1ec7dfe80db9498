"""The package metadata (pyproject.toml) installs what the requirements files do, and a fresh install gives a
working `liveportrait-rt` command."""
from __future__ import annotations

import os
import re
import subprocess
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_names(lines: list[str]) -> set[str]:
    """Package names of requirement lines (no versions, extras, comments or -r includes)."""
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-") and not line.startswith("liveportrait-rt"):
            names.add(re.split(r"[\[<>=!~ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def file_names(name: str) -> set[str]:
    return requirement_names((ROOT / name).read_text().splitlines())


def test_extras_mirror_the_requirements_files() -> None:
    base, extras = requirement_names(PROJECT["dependencies"]), PROJECT["optional-dependencies"]
    assert base | requirement_names(extras["cpu"]) == file_names("requirements.txt")
    assert base | requirement_names(extras["gpu"]) == file_names("requirements-gpu.txt")
    assert requirement_names(extras["export"]) == file_names("requirements-export.txt")
    assert requirement_names(extras["comfyui"]) == file_names("requirements-comfyui.txt")
    dev = {line for line in extras["dev"] if not line.startswith("liveportrait-rt")}
    assert requirement_names(list(dev)) == {
        n for n in file_names("requirements-dev.txt") if n not in file_names("requirements.txt") | file_names("requirements-export.txt")
    }
    assert "onnxruntime" not in base and "onnxruntime-gpu" not in base  # the two builds are never installed together
    assert PROJECT["scripts"] == {"liveportrait-rt": "main:main"}


def test_the_comfyui_requirements_leave_out_the_app_only_packages() -> None:
    assert not file_names("requirements-comfyui.txt") & {"pyside6-essentials", "pyvirtualcam", "tqdm", "imageio-ffmpeg"}


@pytest.mark.slow  # builds a wheel in a fresh venv: about 25 s, and pip fetches setuptools for the build
def test_pip_install_into_a_fresh_venv_gives_a_working_command(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bindir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    # --no-deps: the dependencies come from this test's own environment below, so no large download is needed
    subprocess.run([bindir / "pip", "install", "-q", "--no-deps", str(ROOT)], check=True, cwd=tmp_path)
    deps = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    done = subprocess.run([bindir / "liveportrait-rt", "--help"], capture_output=True, text=True, cwd=tmp_path, env=deps)
    assert done.returncode == 0, done.stderr
    assert "render" in done.stdout and "live" in done.stdout and "--models" in done.stdout
    installed = subprocess.run([bindir / "python", "-c", "import main; print(main.__file__)"], capture_output=True,
                               text=True, cwd=tmp_path, env=deps)
    assert str(env_dir) in installed.stdout  # the installed copy ran, not this checkout


@pytest.mark.slow  # a fresh Python importing torch: about 7 s
def test_the_comfyui_node_imports_nothing_outside_requirements_comfyui() -> None:
    """The node loads with the app-only packages made unimportable, as in a ComfyUI Python that only got
    requirements-comfyui.txt (plus its own torch)."""
    import subprocess
    import sys

    blocked = ["PySide6", "pyvirtualcam", "tqdm", "imageio_ffmpeg", "huggingface_hub"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import comfyui_liveportrait_rt.nodes as nodes\n"
        "print(sorted(nodes.NODE_CLASS_MAPPINGS))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "LivePortraitProcess" in done.stdout
