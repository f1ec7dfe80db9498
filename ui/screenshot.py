"""`python -m ui.screenshot OUT.png [--size 1280x720] [--models DIR --factory MODULE:NAME]`: grab the live window.

It proves the window works end to end without a webcam (e.g. under Xvfb in CI): a shared driving video stands in
for the camera and a shared portrait is animated, by the real processor factory when a models folder is given
(the factory is named on the command line because the UI never imports the engines), else by the demo processor.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import importlib

from engines.layout import ModelsMissingError
from realtime.live_api import FakeProcessor, FrameProcessor, ProcessorFactory
from ui.app import make_window
from ui.settings import Settings

SHARED_MEDIA = Path(os.environ.get("LIVEPORTRAIT_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "media"


class ScreenshotError(RuntimeError):
    """The screenshot could not be taken; the message says why."""


def demo_factory(models_dir: Path | None, backend: str) -> FrameProcessor:
    """The demo processor; it refuses a models folder, which needs a real factory (--factory)."""
    if models_dir is not None:
        raise ModelsMissingError(f"a models folder ({models_dir}) needs --factory MODULE:NAME to load it")
    return FakeProcessor(delay_s=0.01)


def load_factory(spec: str) -> ProcessorFactory:
    """'package.module:function' -> that function."""
    module, sep, name = spec.partition(":")
    if not sep:
        raise ScreenshotError(f"--factory must look like package.module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ScreenshotError(f"cannot load the processor factory {spec}: {exc}") from exc


def take_screenshot(
    out: Path, factory: ProcessorFactory = demo_factory, models_dir: Path | None = None, backend: str = "auto",
    media: Path = SHARED_MEDIA, frames: int = 30, timeout_s: float = 60.0, size: tuple[int, int] = (1280, 720),
    tab: str = "Animation",
) -> Path:
    """Run the window at `size`, showing the controls tab `tab`, until `frames` animated frames were shown, grab
    it to `out` (PNG) and close it."""
    video, portrait = media / "driving" / "d10.mp4", media / "portraits" / "s0.jpg"
    for path in (video, portrait):
        if not path.is_file():
            raise ScreenshotError(f"{path} is missing; set LIVEPORTRAIT_SHARED to the shared folder that has media/")
    with tempfile.TemporaryDirectory() as config:
        # the shared portraits fill the recent-portrait gallery, as after a few sessions
        Settings(recent_portraits=[str(p) for p in sorted((media / "portraits").glob("*.jpg"))]).save(
            Path(config) / "settings.json"
        )
        app, window = make_window(
            models_dir, backend, factory, camera=str(video), portrait=portrait,
            settings_path=Path(config) / "settings.json",
        )
        window.resize(*size)
        tabs = [window.sections.tabText(i) for i in range(window.sections.count())]
        if tab not in tabs:
            window.close()
            raise ScreenshotError(f"no tab {tab!r}; the tabs are {', '.join(tabs)}")
        window.sections.setCurrentIndex(tabs.index(tab))
        deadline = time.monotonic() + timeout_s
        while window.frames_animated < frames and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.01)
        for _ in range(60):  # let the readout refresh after the last frame
            app.processEvents()
            time.sleep(0.01)
        shown = window.frames_animated
        ok = window.grab().save(str(out), "PNG")
        window.close()
        app.processEvents()
    if shown < frames:
        raise ScreenshotError(f"only {shown} of {frames} animated frames reached the window in {timeout_s:g} s")
    if not ok:
        raise ScreenshotError(f"cannot write {out}; check the folder exists and is writable")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG file to write")
    parser.add_argument("--models", type=Path, help="exported models folder (default: the demo processor)")
    parser.add_argument("--factory", help="processor factory for --models, as package.module:function")
    parser.add_argument("--backend", default="auto", help="backend passed to the factory (auto, cpu, cuda)")
    parser.add_argument("--frames", type=int, default=30, help="frames to wait for before grabbing")
    parser.add_argument("--size", default="1280x720", help="window size WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--tab", default="Animation", help="controls tab to show (default Animation)")
    args = parser.parse_args(argv)
    try:
        width, _, height = args.size.partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise ScreenshotError(f"--size must look like 1280x720, got {args.size!r}")
        factory = load_factory(args.factory) if args.factory else demo_factory
        path = take_screenshot(args.out, factory, args.models, args.backend, frames=args.frames,
                               size=(int(width), int(height)), tab=args.tab)
    except (ScreenshotError, RuntimeError) as exc:  # RuntimeError: no display (ui.app.check_display)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
