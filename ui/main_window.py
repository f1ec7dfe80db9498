"""The live window: camera and portrait pickers, every animation option, side-by-side preview, outputs.

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
from PySide6.QtCore import QObject, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent, QIcon, QImage, QKeySequence, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from realtime.camera import CameraError, FrameSource, list_cameras, open_camera
from core.images import ImageInputError, load_image
from engines.layout import DOWNLOAD_COMMAND
from realtime.frames import LiveFrame
from realtime.live_api import BACKENDS, FrameProcessor, ProcessorFactory, load_error_message
from realtime.loop import CallbackSink, LiveLoop
from core.options import ANIMATION_REGIONS, OPTION_RANGES, ProcessOptions
from realtime.record import Recorder
from render.outputs import RecordError
from realtime.vcam import CameraBackend, VirtualCameraUnavailable, VirtualCamSink
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
IMAGE_FILTER = "Images (*.jpg *.jpeg *.png *.bmp *.webp)"
VIDEO_FILTER = "Videos (*.mp4 *.avi *.mov *.mkv *.webm)"


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
            self.settings.options = {k: v for k, v in options.__dict__.items() if k != "onnx_device"}
        if mirror is not None:
            self.settings.mirror = mirror
        self.loop: LiveLoop | None = None
        self.processor: FrameProcessor | None = None
        self.portrait_image: np.ndarray | None = None
        self.vcam: VirtualCamSink | None = None
        self.recorder: Recorder | None = None
        self.messages: dict[str, str] = {}
        self.frames_shown = 0
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
        self.readout_timer = QTimer(self)
        self.readout_timer.timeout.connect(self._update_readout)
        self.readout_timer.start(500)

    # -- layout -------------------------------------------------------------------------------------------------
    def _build(self, backend: str) -> None:
        controls = QVBoxLayout()
        controls.addWidget(self._camera_group())
        controls.addWidget(self._portrait_group())
        controls.addWidget(self._options_group(backend))
        controls.addWidget(self._output_group())
        controls.addStretch(1)
        panel = QWidget()
        panel.setLayout(controls)
        scroll = QScrollArea()
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(panel.sizeHint().width() + 24)

        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.setStyleSheet("background:#fff3cd; color:#5c4400; padding:6px; border:1px solid #e0c060;")
        self.banner.hide()
        self.camera_view, self.output_view = QLabel("camera"), QLabel("choose a portrait")
        for view in (self.camera_view, self.output_view):
            view.setMinimumSize(360, 360)
            view.setAlignment(Qt.AlignmentFlag.AlignCenter)
            view.setStyleSheet("background:#202020; color:#bbbbbb;")
        views = QHBoxLayout()
        views.addWidget(self.camera_view, 1)
        views.addWidget(self.output_view, 1)
        self.status_line = QLabel()
        self.readout = QLabel("starting")
        self.backend_label = QLabel()
        right = QVBoxLayout()
        right.addWidget(self.banner)
        right.addLayout(views, 1)
        right.addWidget(self.status_line)
        right.addWidget(self.readout)
        right.addWidget(self.backend_label)

        root = QHBoxLayout()
        root.addWidget(scroll)
        root.addLayout(right, 1)
        central = QWidget()
        central.setLayout(root)
        self.setCentralWidget(central)
        self._shortcuts()

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

    def _camera_group(self) -> QGroupBox:
        group = QGroupBox("Camera")
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
        self.mirror_check = QCheckBox("mirror: the portrait moves like your reflection")
        self.mirror_check.setChecked(self.settings.mirror)
        self.mirror_check.setToolTip("Flip the camera picture left-right; the current pose becomes the neutral one")
        self.mirror_check.toggled.connect(self._set_mirror)
        form.addRow(self.mirror_check)
        apply = QPushButton("Open camera")
        apply.clicked.connect(lambda: self._on_camera_chosen(self.camera_combo.currentIndex()))
        form.addRow(apply)
        return group

    def _portrait_group(self) -> QGroupBox:
        group = QGroupBox("Portrait (or drop an image on the window)")
        box = QVBoxLayout(group)
        choose = QPushButton("Choose portrait...")
        choose.clicked.connect(self._choose_portrait)
        self.recent_list = QListWidget()
        self.recent_list.setViewMode(QListWidget.ViewMode.IconMode)
        self.recent_list.setIconSize(QSize(64, 64))
        self.recent_list.setFixedHeight(96)
        self.recent_list.setFlow(QListWidget.Flow.LeftToRight)
        self.recent_list.itemClicked.connect(lambda item: self.load_portrait(Path(item.data(Qt.ItemDataRole.UserRole))))
        box.addWidget(choose)
        box.addWidget(self.recent_list)
        self._fill_recent()
        return group

    def _options_group(self, backend: str) -> QGroupBox:
        group = QGroupBox("Animation")
        form = QFormLayout(group)
        defaults = ProcessOptions().__dict__
        saved = defaults | {k: v for k, v in self.settings.options.items() if k in defaults and same_kind(v, defaults[k])}
        for f in fields(ProcessOptions):
            if f.name == "onnx_device":
                continue  # chosen with the device combo below: changing it reloads the models
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
        self.device_combo = QComboBox()
        self.device_combo.addItems(BACKENDS)
        self.device_combo.setCurrentText(backend if backend in BACKENDS else "auto")
        self.device_combo.currentTextChanged.connect(self._on_device_changed)
        form.addRow("device", self.device_combo)
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

    def _output_group(self) -> QGroupBox:
        group = QGroupBox("Output")
        form = QFormLayout(group)
        self.vcam_check = QCheckBox("virtual camera")
        self.vcam_check.toggled.connect(self.set_virtual_camera)
        self.vcam_status = QLabel("off")
        self.vcam_status.setWordWrap(True)
        form.addRow(self.vcam_check, self.vcam_status)
        self.record_button = QPushButton("Record to file...")
        self.record_button.clicked.connect(self._toggle_recording)
        self.record_status = QLabel("not recording")
        self.record_status.setWordWrap(True)
        form.addRow(self.record_button, self.record_status)
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
        if isinstance(result, Exception):
            self.set_message("models", f"Models not loaded: {load_error_message(result)}")
            if self.processor is None:
                self.backend_label.setText("processor: none (the camera preview still runs)")
            else:
                self.backend_label.setText(f"processor: {self.processor.backend}")
            self.device_combo.blockSignals(True)  # back to the backend that still runs, without reloading it
            self.device_combo.setCurrentText(self.loaded_backend or backend)
            self.device_combo.blockSignals(False)
            return
        processor: FrameProcessor = result  # type: ignore[assignment]
        demo = f"No models configured: showing a demo. To animate for real run: {DOWNLOAD_COMMAND}"
        self.set_message("models", demo if self.models_dir is None else None)
        old, self.processor, self.loaded_backend = self.processor, processor, backend
        self.backend_label.setText(f"processor: {processor.backend}")
        if self.loop is not None:
            self._watch_source(self.loop.set_processor(processor), "")  # the loop closes the old one
            self._push_options()
        elif old is not None:
            old.close()

    def _on_device_changed(self, backend: str) -> None:
        self._load_processor(backend)

    def current_options(self) -> ProcessOptions:
        values = {}
        for name, widget in self.option_widgets.items():
            if isinstance(widget, QComboBox):
                values[name] = widget.currentData()
            else:
                values[name] = widget.isChecked() if isinstance(widget, QCheckBox) else widget.value()  # type: ignore[attr-defined]
        values["onnx_device"] = "CUDA" if self.device_combo.currentText() == "cuda" else "CPU"
        return ProcessOptions(**values)

    def _push_options(self) -> None:
        options = self.current_options()
        smoothing = self.smoothing_slider.value() / 100.0
        lock_scale = self.lock_scale_check.isChecked()
        self.settings.options = {k: v for k, v in options.__dict__.items() if k != "onnx_device"}
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
            item = QListWidgetItem(QIcon(QPixmap(path).scaled(64, 64, Qt.AspectRatioMode.KeepAspectRatio)), "")
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
        if path and not Path(path).suffix:  # the dialog did not add the ending: the file it asked about is not this one
            self.start_recording(Path(path + ".mp4"))
        elif path:
            self.start_recording(Path(path), overwrite=True)  # the save dialog already asked before overwriting

    def start_recording(self, path: Path, overwrite: bool = False) -> None:
        if self.loop is None:
            self.set_message("record", "Open a camera before recording")
            return
        try:
            self.recorder = Recorder(path, fps=self.loop.source.fps, overwrite=overwrite)
        except RecordError as exc:
            self.set_message("record", str(exc))
            return
        self.loop.add_sink(self.recorder)
        self.set_message("record", None)
        self.record_status.setText(f"recording to {path}")
        self.record_button.setText("Stop recording")

    def stop_recording(self) -> None:
        if self.recorder is not None and self.loop is not None:
            self.loop.remove_sink(self.recorder)
            self.record_status.setText(f"saved {self.recorder.frames} frames to {self.recorder.path}")
        self.recorder = None
        self.record_button.setText("Record to file...")

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
            self.record_status.setText(f"stopped after {self.recorder.frames} frames: {stats.sink_error}")
            self.recorder = None
            self.record_button.setText("Record to file...")
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
        joined = self.loop.stop(2.0) if self.loop is not None else True  # closes the processor too
        if self.loop is None and self.processor is not None:
            self.processor.close()
        self.loop, self.vcam, self.recorder, self.processor = None, None, None, None
        try:
            self.settings.save(self.settings_path)
        except OSError as exc:  # a read-only config dir must not block closing
            log.warning("could not save settings to %s: %s", self.settings_path, exc)
        return joined

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)
