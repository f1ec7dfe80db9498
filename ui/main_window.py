"""The live window: the animated portrait large with the camera as a picture-in-picture, big Virtual camera and
Record toggles under it, the controls in tabs (Camera, Portrait, Animation, Output) on the right, fps / latency /
backend in the status bar. It fits 1280x720 and scales up; a first-run panel explains how to get the models.

The window never touches the networks: it drives a `LiveLoop` (realtime/loop.py) and shows what its preview
sink delivers. Frames arrive on the loop's output thread; only the newest is handed to the Qt thread, so a busy
UI skips preview frames instead of queueing them.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import fields
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PySide6.QtCore import QByteArray, QObject, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QCloseEvent, QDragEnterEvent, QDropEvent, QIcon, QImage, QKeySequence, QPainter, QPaintEvent, QPixmap,
    QResizeEvent, QShortcut,
)
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from realtime.camera import CameraError, FrameSource, list_cameras, open_camera
from core.images import ImageInputError, load_image
from engines.layout import DOWNLOAD_COMMAND, ModelsMissingError
from engines.settings import data_dir
from realtime.frames import LiveFrame
from realtime.live_api import BACKENDS, FakeProcessor, FrameProcessor, ProcessorFactory, load_error_message
from realtime.loop import DROPPED_HELP, CallbackSink, LiveLoop
from core.options import ANIMATION_REGIONS, OPTION_RANGES, ProcessOptions
from realtime.record import Recorder
from render.outputs import RecordError, plural, refuse_overlap
from realtime.vcam import CameraBackend, VirtualCameraUnavailable, VirtualCamSink
from ui.model_maker import ModelMaker, missing_export_tools, tools_hint
from ui.expression import ExpressionSection
from ui.settings import Settings, same_kind

log = logging.getLogger(__name__)

#: the LivePortraitProcess node's (min, max, step) for each numeric option; booleans are checkboxes
#: spin-box step of each numeric option (its range is the node's, from OPTION_RANGES)
OPTION_STEPS: dict[str, float] = {
    "dsize": 64,
    "scale": 0.05,
    "vx_ratio": 0.01,
    "vy_ratio": 0.01,
    "eyes_retargeting_multiplier": 0.01,
    "lip_retargeting_multiplier": 0.01,
    "driving_multiplier": 0.05,
}
#: what each animation region choice means to a user
REGION_HINTS = {
    "all": "everything", "exp": "expression only (head still)", "pose": "head pose only", "lip": "lips only",
    "eyes": "eyes only",
}
RESOLUTIONS = ("640x480", "1280x720", "1920x1080")
#: the window's size on first start; later starts restore the last one
DEFAULT_SIZE = QSize(1280, 720)
#: width of the controls panel on the right
PANEL_WIDTH = 380
RECORD_IDLE, RECORD_ON = "\u25cf  Record...", "\u25a0  Stop recording"
DEMO_MESSAGE = f"No models configured: showing a demo. To animate for real run: {DOWNLOAD_COMMAND}"
#: the first-run panel: how to get the models, in the order a new user needs it
FIRST_RUN_TEXT = (
    "<b>No models yet.</b> Make them once (needs the export tools; a CPU-only torch is enough):<br>"
    "<code>pip install -r requirements-export.txt --extra-index-url https://download.pytorch.org/whl/cpu</code><br>"
    f"<code>{DOWNLOAD_COMMAND.replace(' && ', '<br>')}</code><br>"
    "then choose the models folder here, or click Check again. Or let the app do both now (it takes minutes):"
)
TOGGLE_STYLE = (
    "QPushButton { font-size: 15px; font-weight: bold; padding: 8px 16px; min-height: 30px; }"
    "QPushButton:checked { background: %s; color: white; }"
)
IMAGE_FILTER = "Images (*.jpg *.jpeg *.png *.bmp *.webp)"
VIDEO_FILTER = "Videos (*.mp4 *.avi *.mov *.mkv *.webm)"


class ElidedLabel(QLabel):
    """One line that never widens the window: too long a text ends in '...', and the whole of it is the tooltip."""

    def __init__(self, text: str = "", tooltip_extra: str = "") -> None:
        super().__init__()
        self.tooltip_extra = tooltip_extra
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        super().setText(text)
        self.setToolTip("\n\n".join(t for t in (text, self.tooltip_extra) if t))

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(0, super().minimumSizeHint().height())

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        painter = QPainter(self)
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, rect.width())
        painter.drawText(rect, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)


class PreviewArea(QWidget):
    """The animated portrait filling the area, the camera small in its bottom-right corner (picture-in-picture)."""

    def __init__(self) -> None:
        super().__init__()
        self.output_view, self.camera_view = QLabel("choose a portrait", self), QLabel("camera", self)
        self.output_view.setStyleSheet("background:#202020; color:#bbbbbb;")
        self.camera_view.setStyleSheet("background:#101010; color:#bbbbbb; border:2px solid #606060;")
        for view in (self.output_view, self.camera_view):
            view.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(320, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        w, h = self.width(), self.height()
        self.output_view.setGeometry(0, 0, w, h)
        pip_w = max(w // 4, 120)
        pip_h = pip_w * 3 // 4
        self.camera_view.setGeometry(w - pip_w - 8, h - pip_h - 8, pip_w, pip_h)
        self.camera_view.raise_()


def saved_options(options: ProcessOptions) -> dict[str, object]:
    """The options worth keeping in window.json: the plain values (the device is chosen anew) and the edit's
    changed controls as a dict."""
    plain = {k: v for k, v in options.__dict__.items() if k != "onnx_device" and isinstance(v, (bool, int, float, str))}
    return plain | {"edit": options.edit.changed()}


def to_pixmap(image_rgb: np.ndarray, size: QSize) -> QPixmap:
    """An RGB uint8 array as a pixmap fitted into `size` (aspect kept)."""
    image = np.ascontiguousarray(image_rgb)
    h, w = image.shape[:2]
    qimage = QImage(image.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()  # copy: numpy owns the bytes
    return QPixmap.fromImage(qimage).scaled(size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)


class _Bridge(QObject):
    """Signals that carry results from the loop's threads to the Qt thread (queued connections)."""

    frame = Signal()
    source_done = Signal(str, str)  # portrait path, error message ("" on success)
    processor_ready = Signal(object, str)  # the new processor or the exception that stopped it, its backend


class MainWindow(QMainWindow):
    def __init__(
        self,
        processor_factory: ProcessorFactory,
        models_dir: Path | None,
        backend: str,
        settings_path: Path,
        camera: str | None = None,
        portrait: Path | None = None,
        vcam_backend: Callable[[int, int, float], CameraBackend] | None = None,
        options: ProcessOptions | None = None,
        virtual_cam: bool = False,
        mirror: bool | None = None,
    ) -> None:
        """`options` and `mirror` (e.g. from the command line) replace the saved ones; `virtual_cam` starts the
        output at once."""
        super().__init__()
        self.setWindowTitle("LivePortrait RT")
        self.setAcceptDrops(True)
        self.factory, self.models_dir, self.settings_path = processor_factory, models_dir, settings_path
        self.vcam_backend = vcam_backend
        self.settings = Settings.load(settings_path)
        if options is not None:
            self.settings.options = saved_options(options)
        if mirror is not None:
            self.settings.mirror = mirror
        self.loop: LiveLoop | None = None
        self.processor: FrameProcessor | None = None
        self.portrait_image: np.ndarray | None = None
        self.vcam: VirtualCamSink | None = None
        self.recorder: Recorder | None = None
        self.messages: dict[str, str] = {}
        self.frames_shown = 0
        self.frames_animated = 0  # of those, frames with an animated portrait (not only the camera)
        self.last_frame: LiveFrame | None = None
        self._latest: LiveFrame | None = None
        self._pending = False
        self._latest_lock = threading.Lock()
        self.bridge = _Bridge()
        self.bridge.frame.connect(self._on_frame)
        self.bridge.source_done.connect(self._on_source_done)
        self.bridge.processor_ready.connect(self._on_processor_ready)
        self.loaded_backend = ""  # the backend of self.processor; the device combo returns to it when a load fails
        self.closing = False
        self.maker: ModelMaker | None = None  # making the models (first-run panel)
        self.option_widgets: dict[str, QWidget] = {}

        self._build(backend)
        self._load_processor(backend)
        self.open_camera(camera or self.settings.camera or self._first_camera())
        if portrait is not None:
            self.load_portrait(portrait)
        elif self.settings.recent_portraits:
            self.load_portrait(Path(self.settings.recent_portraits[0]))
        if virtual_cam:
            self.vcam_check.setChecked(True)
        if not (self.settings.geometry and self.restoreGeometry(QByteArray.fromBase64(self.settings.geometry.encode()))):
            self.resize(DEFAULT_SIZE)
        self.readout_timer = QTimer(self)
        self.readout_timer.timeout.connect(self._update_readout)
        self.readout_timer.start(500)

    # -- layout -------------------------------------------------------------------------------------------------
    def _build(self, backend: str) -> None:
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.setStyleSheet("background:#fff3cd; color:#5c4400; padding:6px; border:1px solid #e0c060;")
        self.banner.hide()
        self.preview = PreviewArea()
        self.camera_view, self.output_view = self.preview.camera_view, self.preview.output_view
        self.status_line = ElidedLabel()
        left = QVBoxLayout()
        left.addWidget(self.banner)
        left.addWidget(self._models_panel())
        left.addWidget(self.preview, 1)
        left.addWidget(self.status_line)
        left.addLayout(self._toggles())

        self.expression = ExpressionSection(self.settings.options.get("edit"), self._push_options)
        self.sections = QTabWidget()
        self.sections.setFixedWidth(PANEL_WIDTH)
        self.add_section("Camera", self._camera_group())
        self.add_section("Portrait", self._portrait_group())
        self.add_section("Animation", self._options_group())
        self.add_section("Output", self._output_group(backend))
        self.add_section("Expression", self.expression)
        # every tab's name in view: no scroll arrows hiding "Camera" (the panel grows to the tab row if needed)
        self.sections.tabBar().setUsesScrollButtons(False)
        self.sections.setFixedWidth(max(PANEL_WIDTH, self.sections.tabBar().sizeHint().width() + 8))

        root = QHBoxLayout()
        root.addLayout(left, 1)
        root.addWidget(self.sections)
        central = QWidget()
        central.setLayout(root)
        self.setCentralWidget(central)
        self.readout = ElidedLabel("starting", tooltip_extra=DROPPED_HELP)
        self.backend_label = ElidedLabel()
        self.backend_label.setMaximumWidth(PANEL_WIDTH)
        self.statusBar().addWidget(self.readout, 1)
        self.statusBar().addPermanentWidget(self.backend_label, 1)
        self._shortcuts()

    def add_section(self, title: str, content: QWidget) -> None:
        """One more tab of controls; it scrolls if the window is too short for it."""
        scroll = QScrollArea()
        scroll.setWidget(content)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.sections.addTab(scroll, title)

    def _toggles(self) -> QHBoxLayout:
        """The two things a streamer switches mid-call, big and always in sight, with their state beside them."""
        self.vcam_check = QPushButton("Virtual camera")
        self.vcam_check.setCheckable(True)
        self.vcam_check.setStyleSheet(TOGGLE_STYLE % "#2e7d32")
        self.vcam_check.setToolTip("Send the animated portrait to the virtual camera (Zoom, Meet, Teams, OBS)")
        self.vcam_check.toggled.connect(self.set_virtual_camera)
        self.record_button = QPushButton(RECORD_IDLE)
        self.record_button.setCheckable(True)
        self.record_button.setStyleSheet(TOGGLE_STYLE % "#c62828")
        self.record_button.setToolTip("Record the animated portrait to an .mp4, in real time")
        self.record_button.clicked.connect(self._toggle_recording)
        self.vcam_status, self.record_status = ElidedLabel("off"), ElidedLabel("not recording")
        row = QHBoxLayout()
        for button, status in ((self.vcam_check, self.vcam_status), (self.record_button, self.record_status)):
            row.addWidget(button)
            row.addWidget(status, 1)
        return row

    def _models_panel(self) -> QFrame:
        """Shown while no models load: the two commands that make them, a folder picker, and a re-check."""
        self.models_panel = QFrame()
        self.models_panel.setObjectName("modelsPanel")
        self.models_panel.setStyleSheet("#modelsPanel { background:#e8f0fe; border:1px solid #8ab4f8; }")
        self.models_reason = QLabel()
        self.models_reason.setWordWrap(True)
        self.models_reason.setStyleSheet("color:#5c4400;")
        text = QLabel(FIRST_RUN_TEXT)
        text.setWordWrap(True)
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        choose = QPushButton("Choose models folder...")
        choose.clicked.connect(self._choose_models)
        again = QPushButton("Check again")
        again.clicked.connect(lambda: self._load_processor(self.device_combo.currentText()))
        self.make_button = QPushButton("Make the models here")
        self.make_button.setToolTip(f"Download and export into {data_dir()}")
        self.make_button.clicked.connect(lambda: self.make_models())
        self.make_status = ElidedLabel()
        buttons = QHBoxLayout()
        for button in (choose, again, self.make_button):
            buttons.addWidget(button)
        buttons.addWidget(self.make_status, 1)
        box = QVBoxLayout(self.models_panel)
        box.addWidget(self.models_reason)
        box.addWidget(text)
        box.addLayout(buttons)
        self.models_panel.hide()
        return self.models_panel

    def _shortcuts(self) -> None:
        """Keys for what is done mid-call (the design's re-anchor hotkey among them); with Ctrl, so they also work
        while a spin box has the focus. Each control's tooltip names its key."""
        keys = {
            "Ctrl+R": (self.recalibrate_button.click, self.recalibrate_button),
            "Ctrl+M": (self.mirror_check.toggle, self.mirror_check),
            "Ctrl+O": (self._choose_portrait, None),
            "F11": (lambda: self.showNormal() if self.isFullScreen() else self.showFullScreen(), None),
        }
        for key, (action, widget) in keys.items():
            QShortcut(QKeySequence(key), self, activated=action)
            if widget is not None:
                widget.setToolTip(f"{widget.toolTip()} ({key})".lstrip())

    def _camera_group(self) -> QWidget:
        group = QWidget()
        form = QFormLayout(group)
        self.camera_combo = QComboBox()
        self._fill_cameras()
        self.camera_combo.activated.connect(self._on_camera_chosen)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self._fill_cameras)
        row = QHBoxLayout()
        row.addWidget(self.camera_combo, 1)
        row.addWidget(refresh)
        form.addRow("Source", row)
        self.resolution_combo = QComboBox()
        self.resolution_combo.addItems(RESOLUTIONS)
        self.resolution_combo.setCurrentText(self.settings.resolution)
        self.fps_spin = QSpinBox()
        self.fps_spin.setRange(5, 60)
        self.fps_spin.setValue(self.settings.fps)
        form.addRow("Resolution", self.resolution_combo)
        form.addRow("FPS", self.fps_spin)
        self.mirror_check = QCheckBox("Mirror (move like my reflection)")
        self.mirror_check.setChecked(self.settings.mirror)
        self.mirror_check.setToolTip("Flip the camera picture left-right; the current pose becomes the neutral one")
        self.mirror_check.toggled.connect(self._set_mirror)
        form.addRow(self.mirror_check)
        apply = QPushButton("Open camera")
        apply.clicked.connect(lambda: self._on_camera_chosen(self.camera_combo.currentIndex()))
        form.addRow(apply)
        return group

    def _portrait_group(self) -> QWidget:
        group = QWidget()
        box = QVBoxLayout(group)
        choose = QPushButton("Choose portrait...")
        choose.setToolTip("Ctrl+O; or drop an image file on the window")
        choose.clicked.connect(self._choose_portrait)
        hint = QLabel("Recent portraits (click one to use it), or drop an image on the window:")
        hint.setWordWrap(True)
        self.recent_list = QListWidget()
        self.recent_list.setViewMode(QListWidget.ViewMode.IconMode)
        self.recent_list.setIconSize(QSize(96, 96))
        self.recent_list.setGridSize(QSize(108, 108))
        self.recent_list.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.recent_list.setMovement(QListWidget.Movement.Static)
        self.recent_list.itemClicked.connect(lambda item: self.load_portrait(Path(item.data(Qt.ItemDataRole.UserRole))))
        box.addWidget(choose)
        box.addWidget(hint)
        box.addWidget(self.recent_list, 1)
        self._fill_recent()
        return group

    def _options_group(self) -> QWidget:
        group = QWidget()
        form = QFormLayout(group)
        defaults = ProcessOptions().__dict__
        saved = defaults | {k: v for k, v in self.settings.options.items() if k in defaults and same_kind(v, defaults[k])}
        for f in fields(ProcessOptions):
            if f.name == "onnx_device" or not isinstance(defaults[f.name], (bool, int, float, str)):
                continue  # the device is chosen on the Output tab (it reloads the models); an edit has its own tab
            widget = self._option_widget(f.name, saved[f.name])
            self.option_widgets[f.name] = widget
            form.addRow(f.name.replace("_", " "), widget)
        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setRange(0, 100)
        self.smoothing_slider.setValue(round(self.settings.smoothing * 100))
        self.smoothing_slider.valueChanged.connect(self._push_options)
        form.addRow("smoothing", self.smoothing_slider)
        self.lock_scale_check = QCheckBox("keep the portrait's head size")
        self.lock_scale_check.setChecked(self.settings.lock_scale)
        self.lock_scale_check.toggled.connect(self._push_options)
        form.addRow("head-scale lock", self.lock_scale_check)
        self.recalibrate_button = QPushButton("Recalibrate neutral")
        self.recalibrate_button.setToolTip("Look straight at the camera with a neutral face, then click")
        self.recalibrate_button.clicked.connect(lambda: self.loop.recalibrate() if self.loop else None)
        form.addRow(self.recalibrate_button)
        return group

    def _option_widget(self, name: str, value: object) -> QWidget:
        if isinstance(value, bool):
            check = QCheckBox()
            check.setChecked(value)
            check.toggled.connect(self._push_options)
            return check
        if name == "animation_region":
            combo = QComboBox()
            for region in ANIMATION_REGIONS:
                combo.addItem(f"{region}: {REGION_HINTS[region]}", region)
            combo.setCurrentIndex(max(combo.findData(value), 0))
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(14)
            combo.currentIndexChanged.connect(self._push_options)
            return combo
        (low, high), step = OPTION_RANGES[name], OPTION_STEPS[name]
        spin: QSpinBox | QDoubleSpinBox
        if isinstance(value, int):
            spin = QSpinBox()
            spin.setRange(int(low), int(high))
            spin.setSingleStep(int(step))
        else:
            spin = QDoubleSpinBox()
            spin.setDecimals(3)
            spin.setRange(low, high)
            spin.setSingleStep(step)
        spin.setValue(value)  # type: ignore[arg-type]
        spin.valueChanged.connect(self._push_options)
        return spin

    def _output_group(self, backend: str) -> QWidget:
        """Where the networks run, and what the two outputs need (the toggles themselves are under the preview)."""
        group = QWidget()
        form = QFormLayout(group)
        self.device_combo = QComboBox()
        self.device_combo.addItems(BACKENDS)
        self.device_combo.setCurrentText(backend if backend in BACKENDS else "auto")
        self.device_combo.setToolTip("auto: TensorRT, then ONNX Runtime CUDA, then the CPU")
        self.device_combo.currentTextChanged.connect(self._on_device_changed)
        form.addRow("run the networks on", self.device_combo)
        notes = QLabel(
            "<b>Virtual camera</b>: pick \"LivePortrait RT\" (Linux, v4l2loopback) or \"OBS Virtual Camera\" "
            "(Windows, macOS: install OBS 28+ and start its virtual camera once) as the camera in Zoom, Meet, "
            "Teams or OBS.<br><br><b>Record</b> writes an .mp4 in real time: on a slow machine each animated "
            "frame is held until the next, so a minute of camera makes a minute of video."
        )
        notes.setWordWrap(True)
        form.addRow(notes)
        return group

    # -- messages -----------------------------------------------------------------------------------------------
    def set_message(self, key: str, text: str | None) -> None:
        """Show (or clear with None) one banner message: models, camera, camera_status, portrait, vcam, record, outputs."""
        if text:
            self.messages[key] = text
        else:
            self.messages.pop(key, None)
        self.banner.setText("\n".join(self.messages.values()))
        self.banner.setVisible(bool(self.messages))

    # -- processor ----------------------------------------------------------------------------------------------
    def _load_processor(self, backend: str) -> None:
        """Open the models on a worker thread: a first TensorRT start builds engines for minutes, and the window
        (and the camera preview) must stay live meanwhile. The result arrives in _on_processor_ready."""
        self.device_combo.setEnabled(False)
        self.backend_label.setText(f"processor: loading the models for {backend}...")

        def load() -> None:
            try:
                result: object = self.factory(self.models_dir, backend)
            except Exception as exc:  # ModelLoadError, ModelsMissingError, a broken install: shown in the window
                result = exc
            self.bridge.processor_ready.emit(result, backend)

        threading.Thread(target=load, name="load-models", daemon=True).start()

    def _on_processor_ready(self, result: object, backend: str) -> None:
        self.device_combo.setEnabled(True)
        if self.closing:  # the window closed while the models loaded
            if not isinstance(result, Exception):
                result.close()  # type: ignore[attr-defined]
            return
        missing = isinstance(result, ModelsMissingError)
        self.models_panel.setVisible(missing)
        if isinstance(result, Exception):
            if missing:  # the panel says how to make them: only what is missing, once, in the panel
                self.models_reason.setText(f"Models not loaded: {str(result).split('; create')[0]}.")
            self.set_message("models", None if missing else f"Models not loaded: {load_error_message(result)}")
            if self.processor is None:
                self.backend_label.setText("processor: none (the camera preview still runs)")
            else:
                self.backend_label.setText(f"processor: {self.processor.backend}")
            self.device_combo.blockSignals(True)  # back to the backend that still runs, without reloading it
            self.device_combo.setCurrentText(self.loaded_backend or backend)
            self.device_combo.blockSignals(False)
            return
        processor: FrameProcessor = result  # type: ignore[assignment]
        # the demo is said only when the stand-in really runs, whichever way the models folder was found
        self.set_message("models", DEMO_MESSAGE if isinstance(processor, FakeProcessor) else None)
        old, self.processor, self.loaded_backend = self.processor, processor, backend
        self.backend_label.setText(f"processor: {processor.backend}")
        if self.loop is not None:
            self._watch_source(self.loop.set_processor(processor), "")  # the loop closes the old one
            self._push_options()
        elif old is not None:
            old.close()

    def _on_device_changed(self, backend: str) -> None:
        self._load_processor(backend)

    def _choose_models(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Models folder (from python -m export onnx)")
        if folder:
            self.use_models_dir(Path(folder))

    def make_models(self, folder: Path | None = None, command: list[str] | None = None) -> None:
        """Download and export the models into `folder` (default: the app's data folder) in child processes, the
        last output line showing in the panel; they load when done. `command` stands in for the export tools."""
        if command is None and missing_export_tools():
            self.make_status.setText(tools_hint())
            return
        self.maker = ModelMaker(folder or data_dir(), command)
        self.maker.progress.connect(self.make_status.setText)
        self.maker.finished.connect(self._on_models_made)
        self.make_button.setEnabled(False)
        self.maker.start()

    def _on_models_made(self, folder: str, error: str) -> None:
        self.maker = None
        self.make_button.setEnabled(True)
        if error:
            self.make_status.setText(f"could not make the models: {error}")
        else:
            self.make_status.setText(f"models made in {folder}")
            self.use_models_dir(Path(folder))

    def use_models_dir(self, folder: Path) -> None:
        """Load from this folder now; once it loads it is remembered like --models (engines/settings.py)."""
        self.models_dir = folder
        self._load_processor(self.device_combo.currentText())

    def current_options(self) -> ProcessOptions:
        values = {}
        for name, widget in self.option_widgets.items():
            if isinstance(widget, QComboBox):
                values[name] = widget.currentData()
            else:
                values[name] = widget.isChecked() if isinstance(widget, QCheckBox) else widget.value()  # type: ignore[attr-defined]
        values["onnx_device"] = "CUDA" if self.device_combo.currentText() == "cuda" else "CPU"
        return ProcessOptions(**values, edit=self.expression.edit())

    def _push_options(self) -> None:
        options = self.current_options()
        smoothing = self.smoothing_slider.value() / 100.0
        lock_scale = self.lock_scale_check.isChecked()
        self.settings.options = saved_options(options)
        self.settings.smoothing, self.settings.lock_scale = smoothing, lock_scale
        if self.loop is not None:
            self.loop.set_options(options, smoothing, lock_scale)

    # -- camera -------------------------------------------------------------------------------------------------
    def _first_camera(self) -> str:
        return str(self.camera_combo.itemData(0))  # the last item ("Video file...") has "" as data

    def _fill_cameras(self) -> None:
        self.camera_combo.clear()
        for index in list_cameras():
            self.camera_combo.addItem(f"Camera {index}", str(index))
        self.camera_combo.addItem("Video file...", "")

    def _on_camera_chosen(self, row: int) -> None:
        spec = self.camera_combo.itemData(row)
        if not spec:
            path, _ = QFileDialog.getOpenFileName(self, "Video to use as the camera", "", VIDEO_FILTER)
            if not path:
                return
            spec = path
        self.open_camera(spec)

    def open_camera(self, spec: str) -> None:
        """Switch the driving camera (an index as text, or a video path); "" means no camera was found."""
        if not spec:
            self.set_message(
                "camera", "No camera found: plug in a webcam and click Refresh, or choose a video file as the camera"
            )
            return
        width, height = (int(v) for v in self.resolution_combo.currentText().split("x"))
        try:
            source = open_camera(spec, width, height, self.fps_spin.value())
        except CameraError as exc:
            self.set_message("camera", str(exc))
            return
        if self.camera_combo.findData(spec) < 0:
            self.camera_combo.insertItem(self.camera_combo.count() - 1, f"Video: {Path(spec).name}", spec)
        self.camera_combo.setCurrentIndex(self.camera_combo.findData(spec))
        self.settings.camera, self.settings.resolution = spec, self.resolution_combo.currentText()
        self.settings.fps = self.fps_spin.value()
        self.set_message("camera", None)
        self.set_message("camera_status", source.status or None)
        if self.loop is None:
            self._start_loop(source)
        else:
            self.loop.set_camera(source)

    def _set_mirror(self, on: bool) -> None:
        self.settings.mirror = on
        if self.loop is not None:
            self.loop.set_mirror(on)

    def _start_loop(self, source: FrameSource) -> None:
        self.loop = LiveLoop(self.processor, source, [CallbackSink(self._frame_from_loop)])
        self.loop.set_mirror(self.settings.mirror)
        self._push_options()
        if self.portrait_image is not None:
            self._watch_source(self.loop.set_source(self.portrait_image), "")
        self.loop.start()

    # -- portrait -----------------------------------------------------------------------------------------------
    def _choose_portrait(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Portrait to animate", "", IMAGE_FILTER)
        if path:
            self.load_portrait(Path(path))

    def load_portrait(self, path: Path) -> None:
        """Decode a portrait and hand it to the processor; errors (e.g. no face) appear in the banner."""
        try:
            image = load_image(path)
        except ImageInputError as exc:  # missing, undecodable, too small: say so, keep the current portrait
            self.set_message("portrait", f"Cannot use the portrait: {exc}")
            return
        self.portrait_image = image
        if self.loop is not None:
            self._watch_source(self.loop.set_source(image), str(path))
        self.settings.add_recent(path)
        self._fill_recent()

    def _watch_source(self, future: Future[None], path: str) -> None:
        def done(f: Future[None]) -> None:
            exc = f.exception()
            self.bridge.source_done.emit(path, "" if exc is None else str(exc))

        future.add_done_callback(done)

    def _on_source_done(self, path: str, error: str) -> None:
        where = f" ({Path(path).name})" if path else ""
        self.set_message("portrait", f"Portrait not usable{where}: {error}" if error else None)

    def _fill_recent(self) -> None:
        self.recent_list.clear()
        for path in self.settings.recent_portraits:
            icon = QPixmap(path).scaled(96, 96, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
            item = QListWidgetItem(QIcon(icon), "")
            item.setToolTip(path)
            item.setData(Qt.ItemDataRole.UserRole, path)
            self.recent_list.addItem(item)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        files = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if files:
            self.load_portrait(Path(files[0]))
            event.acceptProposedAction()

    # -- outputs ------------------------------------------------------------------------------------------------
    def set_virtual_camera(self, on: bool) -> None:
        if self.loop is None:
            on = False
        if on and self.vcam is None and self.loop is not None:
            try:
                self.vcam = VirtualCamSink(fps=self.loop.source.fps, backend=self.vcam_backend)
            except VirtualCameraUnavailable as exc:
                self.set_message("vcam", str(exc))
                self.vcam_status.setText("unavailable")
                self.vcam_check.setChecked(False)
                return
            self.loop.add_sink(self.vcam)
            self.set_message("vcam", None)
            self.vcam_status.setText(self.vcam.status)
        elif not on and self.vcam is not None:
            if self.loop is not None:
                self.loop.remove_sink(self.vcam)
            self.vcam = None
            self.vcam_status.setText("off")
        self.vcam_check.setChecked(self.vcam is not None)

    def _toggle_recording(self) -> None:
        if self.recorder is not None:
            self.stop_recording()
            return
        path, _ = QFileDialog.getSaveFileName(self, "Record the animated portrait", "live.mp4", "MP4 video (*.mp4)")
        self._show_recording(False)  # until a recording really starts
        if path and not Path(path).suffix:  # the dialog did not add the ending: the file it asked about is not this one
            self.start_recording(Path(path + ".mp4"))
        elif path:
            self.start_recording(Path(path), overwrite=True)  # the save dialog already asked before overwriting

    def start_recording(self, path: Path, overwrite: bool = False) -> None:
        if self.loop is None:
            self.set_message("record", "Open a camera before recording")
            return
        try:
            refuse_overlap({"camera video": getattr(self.loop.source, "path", None)}, {"recording": path})
            self.recorder = Recorder(path, fps=self.loop.source.fps, overwrite=overwrite)
        except RecordError as exc:
            self.set_message("record", str(exc))
            return
        self.loop.add_sink(self.recorder)
        self.set_message("record", None)
        self.record_status.setText(f"recording to {path} (in real time)")
        self._show_recording(True)

    def stop_recording(self) -> None:
        if self.recorder is not None and self.loop is not None:
            try:
                self.loop.remove_sink(self.recorder)
            except RecordError as exc:  # ffmpeg could not finish the file (a full disk): the message says what is left
                self.record_status.setText(str(exc))
            else:
                self.record_status.setText(f"saved {plural(self.recorder.frames, 'frame')} to {self.recorder.path}")
        self.recorder = None
        self._show_recording(False)

    def _show_recording(self, on: bool) -> None:
        self.record_button.setChecked(on)
        self.record_button.setText(RECORD_ON if on else RECORD_IDLE)

    # -- frames -------------------------------------------------------------------------------------------------
    def _frame_from_loop(self, frame: LiveFrame) -> None:
        """Output thread: keep only the newest frame and wake the Qt thread once."""
        with self._latest_lock:
            self._latest = frame
            wake, self._pending = not self._pending, True
        if wake:
            self.bridge.frame.emit()

    def _on_frame(self) -> None:
        with self._latest_lock:
            frame, self._latest, self._pending = self._latest, None, False
        if frame is None:
            return
        camera = frame.camera
        if frame.result.face_box is not None:
            camera = camera.copy()
            x1, y1, x2, y2 = frame.result.face_box
            cv2.rectangle(camera, (x1, y1), (x2, y2), (0, 255, 0), max(2, camera.shape[1] // 320))
        self.camera_view.setPixmap(to_pixmap(camera, self.camera_view.size()))
        if frame.result.output is not None:
            self.output_view.setPixmap(to_pixmap(frame.result.output, self.output_view.size()))
            self.frames_animated += 1
        self.status_line.setText(frame.result.status or "tracking")
        self.last_frame = frame
        self.frames_shown += 1

    def _update_readout(self) -> None:
        if self.loop is None:
            return
        stats = self.loop.stats()
        self.readout.setText(stats.line())
        self.set_message("camera_status", stats.camera_status or None)
        self.set_message("outputs", stats.sink_error or None)
        # an output the loop dropped after an error (disk full, device gone) is switched off here too
        if self.recorder is not None and self.recorder not in self.loop.sinks:
            self.record_status.setText(f"stopped after {plural(self.recorder.frames, 'frame')}: {stats.sink_error}")
            self.recorder = None
            self._show_recording(False)
        if self.vcam is not None and self.vcam not in self.loop.sinks:
            self.vcam = None
            self.vcam_status.setText("stopped")
            self.vcam_check.setChecked(False)

    # -- shutdown -----------------------------------------------------------------------------------------------
    def shutdown(self) -> bool:
        """Stop every thread (within 2 s), close the outputs and save the settings. True if all threads joined.
        Closing twice (closeEvent, then run_app) does nothing the second time."""
        if self.closing:
            return True
        self.closing = True
        self.readout_timer.stop()
        if self.maker is not None:
            self.maker.stop()
        joined = self.loop.stop(2.0) if self.loop is not None else True  # closes the processor too
        if self.loop is None and self.processor is not None:
            self.processor.close()
        self.loop, self.vcam, self.recorder, self.processor = None, None, None, None
        self.settings.geometry = bytes(self.saveGeometry().toBase64().data()).decode("ascii")
        try:
            self.settings.save(self.settings_path)
        except OSError as exc:  # a read-only config dir must not block closing
            log.warning("could not save settings to %s: %s", self.settings_path, exc)
        return joined

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)
