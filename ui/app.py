"""Entry point of the desktop app: `run_app(models_dir, backend, processor_factory)` opens the live window."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QApplication

from realtime.live_api import ProcessorFactory
from ui.main_window import MainWindow
from ui.settings import default_settings_path


#: what to use instead of the window where there is no screen
HEADLESS_HINT = (
    "`python main.py live --source portrait.jpg --no-window --virtual-cam` (or --record out.mp4) and "
    "`python main.py render` work without one"
)


def check_display() -> None:
    """Say in one line that the window needs a screen, where Qt would otherwise abort the process (Linux, BSD)."""
    if not sys.platform.startswith(("linux", "freebsd", "openbsd")) or os.environ.get("QT_QPA_PLATFORM"):
        return
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise RuntimeError(f"the window needs a display and none is set ($DISPLAY / $WAYLAND_DISPLAY); {HEADLESS_HINT}")


def make_window(
    models_dir: Path | None,
    backend: str,
    processor_factory: ProcessorFactory,
    *,
    settings_path: Path | None = None,
    **window_options: Any,
) -> tuple[QApplication, MainWindow]:
    """The application object (reused when one exists) and a shown main window; window_options are MainWindow's
    keyword options (camera, portrait, vcam_backend, options, virtual_cam)."""
    if QApplication.instance() is None:
        check_display()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("LivePortrait RT")
    window = MainWindow(
        processor_factory, models_dir, backend, settings_path or default_settings_path(), **window_options
    )
    window.show()
    return app, window  # type: ignore[return-value]


def run_app(models_dir: Path | None, backend: str, processor_factory: ProcessorFactory, **window_options: Any) -> int:
    """Open the window (make_window's keyword options) and run until it is closed; the Qt event loop's exit code."""
    app, window = make_window(models_dir, backend, processor_factory, **window_options)
    code = app.exec()
    window.shutdown()
    return code
