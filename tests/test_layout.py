"""The layout's rules, read from the code's own imports (ast): arrows only go down, no circles, torch only in export,
and no module of tests/ imports a test module (shared helpers have modules of their own).

The rules are data (ALLOWED): each top-level package names the packages it may import. A new module is checked
the moment it exists; a new package must be added here, with the README's Architecture section.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("main", "core", "engines", "export", "render", "realtime", "ui", "comfyui_liveportrait_rt", "bench")

#: package -> the packages its modules may import (itself included). ui -> realtime -> render -> core -> engines;
#: export (torch -> ONNX) sits beside them and uses only engines (the models-folder layout, the engine builder for
#: `python -m export trt`); main.py is the CLI on top and the one place that starts a benchmark (`main.py bench`).
ALLOWED = {
    "engines": {"engines"},
    "core": {"core", "engines"},
    "render": {"render", "core", "engines"},
    "realtime": {"realtime", "render", "core", "engines"},
    "ui": {"ui", "realtime", "render", "core", "engines"},
    "export": {"export", "engines"},
    "comfyui_liveportrait_rt": {"comfyui_liveportrait_rt", "render", "core", "engines"},
    "bench": {"bench", "realtime", "render", "core", "engines", "export"},
    "main": {"ui", "realtime", "render", "core", "engines", "bench"},
}
#: modules that need torch: the exporter, the PyTorch side of the network benchmark, and the ComfyUI node (ComfyUI
#: hands it torch tensors); everything else must import with torch absent
TORCH_USERS = ("export", "bench.networks", "bench.precision", "bench.cpu", "comfyui_liveportrait_rt")


def module_files() -> dict[str, Path]:
    files = {"main": ROOT / "main.py"}
    for package in OURS[1:]:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(name: str, path: Path, roots: tuple[str, ...] = OURS) -> set[str]:
    """The modules under `roots` (ours by default) that `name` imports anywhere in its file (lazy and TYPE_CHECKING
    imports included)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] in roots}


def other_test_modules(path: Path) -> set[str]:
    """The tests.test_* modules, other than its own, that the file of tests/ at `path` imports."""
    name = f"tests.{path.stem}"
    found = {".".join(m.split(".")[:2]) for m in imports_of(name, path, ("tests",))}
    return {m for m in found if m.startswith("tests.test_") and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: {m for m in imports_of(name, path) if m in files} for name, path in files.items()}


def test_every_package_has_rules() -> None:
    assert set(ALLOWED) == set(OURS)
    assert {name.split(".")[0] for name in module_files()} == set(OURS)


def test_arrows_only_go_down(graph: dict[str, set[str]]) -> None:
    upward = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        for target in targets
        if target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    )
    assert upward == []


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    """Depth-first search for a back edge; a package's __init__ importing its own modules is not a circle."""
    edges = {name: {t for t in targets if not name.startswith(t + ".") and t != name} for name, targets in graph.items()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_a_rule_break_is_caught(tmp_path: Path) -> None:
    """The checker itself: an engines module importing realtime is reported, and a circle is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from realtime.loop import LiveLoop\nimport core.animator\n")
    assert imports_of("engines.bad", bad) >= {"realtime.loop", "core.animator"}
    rel = tmp_path / "__init__.py"
    rel.write_text("from .crop import crop_box\nfrom . import motion\n")
    assert imports_of("core", rel) >= {"core.crop", "core.motion"}


def test_no_test_module_imports_another() -> None:
    """Tests share helpers through helper modules (tests/windows.py, tests/loops.py, ...) and conftest fixtures, never
    through a test module, so that a test file can be edited, moved or run alone without breaking others."""
    found = {path.name: other_test_modules(path) for path in sorted((ROOT / "tests").glob("*.py"))}
    assert {"test_layout.py", "conftest.py", "loops.py"} <= set(found)
    assert {name: modules for name, modules in found.items() if modules} == {}


def test_a_test_module_importing_another_is_caught(tmp_path: Path) -> None:
    """The checker itself: every form of importing another test module is reported; helper modules and the file's
    own name are not."""
    planted = tmp_path / "test_planted.py"
    planted.write_text(
        "from tests.test_loop import SyntheticCamera\nimport tests.test_ui\nfrom . import test_motion\n"
        "from .test_edit import CASES\nfrom tests.loops import wait_for\nfrom tests import windows, test_planted\n"
        "def lazy():\n    from tests.test_templates import good_arrays\n"
    )
    assert other_test_modules(planted) == {
        "tests.test_loop", "tests.test_ui", "tests.test_motion", "tests.test_edit", "tests.test_templates"
    }


def test_only_export_and_torch_users_need_torch() -> None:
    """Import every other module with torch blocked, as on a machine without the export tools; this includes the
    TensorRT engine builder and cache (engines.trt_build, engines.trt_cache), which a user's app runs on first start."""
    names = [n for n in module_files() if not any(n == t or n.startswith(t + ".") for t in TORCH_USERS)]
    assert {"engines.trt_build", "engines.trt_cache", "core.animator", "render.offline", "ui.main_window"} <= set(names)
    code = (
        "import importlib, os, sys\n"
        "os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
        "sys.modules['torch'] = None\n"
        f"names = {names!r}\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print('imported', len(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"imported {len(names)}"
