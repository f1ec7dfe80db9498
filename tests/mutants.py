"""Mutation check: does the suite fail when the product breaks?

Each mutant replaces one exact string of the product with a broken version, in a throw-away copy of the
repository, and runs the tests that guard that code; the mutant is *killed* when they fail. The working tree is
never modified, so the check is safe while others edit it, and an interrupted run leaves nothing behind.

    python -m tests.mutants                      # every mutant, then the score
    python -m tests.mutants loop-status cli-options   # some, by name
    python -m tests.mutants --list

A mutant whose string is no longer in its file (exactly once) is reported as `stale`: update it with the code.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: pytest exit codes: 1 = tests failed, 2 = collection failed (a mutant that breaks an import); both kill it
KILLED_CODES = (1, 2)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


MUTANTS = (
    # the integration layer: the four mutants the first audit found surviving
    Mutant("node-widgets", "comfyui_liveportrait_rt/nodes.py", "settings = ProcessOptions(**options)",
           "settings = ProcessOptions()",
           ("tests/test_comfyui_node.py::test_node_frames_are_exactly_what_process_gives",)),
    Mutant("node-progress", "comfyui_liveportrait_rt/nodes.py", "            comfy_progress(),\n", "            None,\n",
           ("tests/test_comfyui_node.py::test_two_sources_times_two_frames_give_four_frames_in_range",)),
    Mutant("cli-options", "main.py", "for name in ProcessOptions.names() if hasattr(args, name)}",
           "for name in () if hasattr(args, name)}",  # every flag ignored: the defaults
           ("tests/test_render.py::test_every_animation_flag_reaches_render_live_and_the_window",)),
    Mutant("loop-status", "realtime/loop.py", 'result = FrameResult(None, status=f"processing failed: {exc}")',
           "result = FrameResult(None)",
           ("tests/test_loop.py::test_processor_failure_keeps_stream_and_reports",)),
    # the method and the live path
    Mutant("stitching-shift", "core/motion.py", "    x[:, :2] += delta[3 * K :]\n", "",
           ("tests/test_motion.py",)),
    Mutant("paste-feather", "core/paste.py", "mb * warped[ys, xs] + (np.float32(1) - mb) * region[ys, xs]",
           "np.float32(1) * warped[ys, xs]", ("tests/test_paste.py",)),
    Mutant("one-euro-beta", "realtime/filters.py", "cutoff = self.min_cutoff + self.beta * np.abs(self.dx_hat)",
           "cutoff = self.min_cutoff", ("tests/test_filters.py",)),
    Mutant("easing-rate", "realtime/filters.py", "keep = 0.5 ** (max(dt, 0.0) / half_life)",
           "keep = 0.5 ** (max(dt, 0.0) / half_life / 2)", ("tests/test_filters.py",)),
    Mutant("box-smoothing", "realtime/filters.py",
           "self.state = obs if self.state is None else self.state + self.alpha * (obs - self.state)",
           "self.state = obs", ("tests/test_crop.py",)),
    Mutant("crop-scale", "core/crop.py", "size = float((hi - lo).max()) * scale", "size = float((hi - lo).max())",
           ("tests/test_crop.py",)),
    Mutant("crop-vy", "core/crop.py", "uy * (vy_ratio * size)", "uy * (0.0 * size)", ("tests/test_crop.py",)),
    Mutant("template-frames", "core/templates.py", "exp=self.exp[i],", "exp=self.exp[0],",
           ("tests/test_templates.py",)),
    Mutant("animation-region", "core/animator.py", "region = options.animation_region", 'region = "all"',
           ("tests/test_animator.py::test_animation_region_and_driving_multiplier_reach_the_keypoints",)),
    Mutant("driving-multiplier", "core/motion.py",
           "return x_d if multiplier == 1.0 else x_s + (x_d - x_s) * np.float32(multiplier)", "return x_d",
           ("tests/test_motion.py",)),
    Mutant("mirror", "realtime/loop.py", "item.image = np.ascontiguousarray(item.image[:, ::-1])",
           "item.image = np.ascontiguousarray(item.image)",
           ("tests/test_loop.py::test_mirror_flips_what_the_processor_and_the_preview_see_and_recalibrates_once",)),
    Mutant("stop-interrupt", "realtime/loop.py", "            processor.interrupt()  # a CPU frame can take seconds",
           "            pass  # a CPU frame can take seconds", ("tests/test_ui_real.py",)),
    Mutant("scale-lock", "realtime/live.py", "motion = replace(motion, scale=self.reference.scale)", "motion = motion",
           ("tests/test_live.py::test_lock_scale_keeps_the_reference_scale",)),
    # the CPU graphs
    Mutant("winograd-pixel-order", "export/winograd.py", 'blocksize=m, mode="DCR"', 'blocksize=m, mode="CRD"',
           ("tests/test_winograd.py",)),
    Mutant("winograd-depth-taps", "export/winograd.py", "u = np.moveaxis(u, 0, 2)", "u = np.moveaxis(u[::-1], 0, 2)",
           ("tests/test_winograd.py",)),
    Mutant("fourier-depth-offset", "export/fft_conv.py", "np.arange(depth) + rd // 2", "np.arange(depth)",
           ("tests/test_fft_conv.py",)),
    Mutant("fourier-conjugate", "export/fft_conv.py", "u = np.conj(np.fft.rfftn(", "u = (np.fft.rfftn(",
           ("tests/test_fft_conv.py",)),
    Mutant("cpu-graph-unread", "engines/ort.py", "source = self.path if want_cuda else cpu_model_file(self.path)",
           "source = self.path",
           ("tests/test_cpu_backend.py::test_onnxruntime_on_the_cpu_reads_the_cpu_graph_when_the_folder_has_it",)),
    Mutant("cpu-graph-unchecked", "export/onnx_export.py", "if worst <= REL_TOLERANCE:", "if True:",
           ("tests/test_winograd.py::test_export_falls_back_to_a_more_exact_plan_when_one_fails_verification",)),
)


def copy_repository(dest: Path) -> Path:
    """The working tree (uncommitted edits included) without git, virtual environments or caches."""
    ignore = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", "weights", "models")
    return Path(shutil.copytree(REPO, dest / REPO.name, ignore=ignore))


def run_tests(tree: Path, tests: tuple[str, ...], timeout_s: float) -> int:
    """pytest's exit code for `tests` in `tree`; no bytecode is written, so a restored file is never shadowed by the
    mutant's cached .pyc (same size, same second)."""
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("LIVEPORTRAIT_SHARED", str(REPO.parent / "shared"))  # the copy has no ../shared beside it
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        return subprocess.run(command, cwd=tree, env=env, capture_output=True, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        return -1


def check(mutant: Mutant, tree: Path, timeout_s: float) -> str:
    """killed / SURVIVED / stale / error (pytest could not run the tests: a bad test id, a timeout)."""
    path = tree / mutant.path
    text = path.read_text()
    if text.count(mutant.original) != 1:
        return "stale"
    path.write_text(text.replace(mutant.original, mutant.mutated))
    try:
        code = run_tests(tree, mutant.tests, timeout_s)
    finally:
        path.write_text(text)
    return "killed" if code in KILLED_CODES else "SURVIVED" if code == 0 else "error"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant's test run")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    if args.list:
        print("\n".join(f"{m.name:20} {m.path:34} {' '.join(m.tests)}" for m in MUTANTS))
        return 0
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}; see --list")
    chosen = [known[name] for name in args.names] or list(MUTANTS)
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        tree = copy_repository(Path(tmp))
        baseline = run_tests(tree, tuple(sorted({t for m in chosen for t in m.tests})), args.timeout)
        if baseline != 0:
            print(f"the unmutated tests do not pass (pytest exit {baseline}); fix them first", file=sys.stderr)
            return 2
        print("| mutant | file | result | s |\n|---|---|---|---:|")
        results = []
        for mutant in chosen:
            start = time.monotonic()
            result = check(mutant, tree, args.timeout)
            results.append(result)
            print(f"| {mutant.name} | {mutant.path} | {result} | {time.monotonic() - start:.0f} |", flush=True)
    killed = results.count("killed")
    print(f"\nscore: {killed}/{len(results)} mutants killed"
          + "".join(f", {results.count(r)} {r}" for r in ("SURVIVED", "stale", "error") if r in results))
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
