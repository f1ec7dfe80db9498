"""The first-run panel's "Make the models here": `python -m export download`, then `python -m export onnx`, run as
child processes so the window stays live for the minutes they take, with their last output line as progress.

They run as processes, not threads: the export tools need torch, which the window never imports (and a crash or a
full disk in them cannot take the window down).
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, Signal

from engines.settings import EXPORT_TOOLS_HINT

#: the repository root, where `python -m export` is found when the app runs from a checkout
ROOT = Path(__file__).resolve().parents[1]


def missing_export_tools() -> list[str]:
    """The export tools' packages that are not installed (torch, onnx, huggingface_hub)."""
    return [name for name in ("torch", "onnx", "huggingface_hub") if importlib.util.find_spec(name) is None]


class ModelMaker(QObject):
    """Download the official weights to `data/weights` and export them to `data/models`, one step after the other."""

    progress = Signal(str)  # the latest output line of the running step
    finished = Signal(str, str)  # the models folder ("" on failure), and why it failed ("" on success)

    def __init__(self, data_dir: Path, command: list[str] | None = None) -> None:
        """`command` runs the export tools (default: this Python with `-m export`); tests give a stand-in."""
        super().__init__()
        self.weights, self.models = data_dir / "weights", data_dir / "models"
        self.command = command or [sys.executable, "-m", "export"]
        self.steps = [
            ["download", "--to", str(self.weights)],
            ["onnx", "--weights", str(self.weights), "--out", str(self.models)],
        ]
        self.process: QProcess | None = None
        self.last_line = ""

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        step = self.steps.pop(0)
        self.process = QProcess(self)
        self.process.setWorkingDirectory(str(ROOT))
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._done)
        self.progress.emit(f"running: python -m export {' '.join(step)}")
        self.process.start(self.command[0], [*self.command[1:], *step])

    def _read(self) -> None:
        text = bytes(self.process.readAllStandardOutput().data()).decode(errors="replace")  # type: ignore[union-attr]
        lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]  # tqdm redraws with \r
        if lines:
            self.last_line = lines[-1]
            self.progress.emit(self.last_line)

    def _done(self, code: int, status: QProcess.ExitStatus) -> None:
        self._read()
        if code != 0 or status != QProcess.ExitStatus.NormalExit:
            self.finished.emit("", self.last_line or f"the export tools stopped with status {code}")
        elif self.steps:
            self._next()
        else:
            self.finished.emit(str(self.models), "")

    def stop(self) -> None:
        """Closing the window ends a running step (a rerun keeps the files already downloaded and verified)."""
        self.steps.clear()
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            self.process.finished.disconnect(self._done)
            self.process.kill()
            self.process.waitForFinished(2000)


def tools_hint() -> str:
    """What the panel says when the export tools are missing: the one pip command that adds them."""
    return f"To make the models here, {EXPORT_TOOLS_HINT} (missing: {', '.join(missing_export_tools())})"
