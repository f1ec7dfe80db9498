"""Where the user's models folder is: command line, then $LIVEPORTRAIT_MODELS, then the saved setting (the last
folder given with --models), then ./models.

The settings file lives in the platform's config folder (platformdirs: ~/.config/liveportrait-rt on Linux,
~/Library/Application Support/liveportrait-rt on macOS, %APPDATA%\\liveportrait-rt on Windows);
$LIVEPORTRAIT_CONFIG_DIR overrides it, which tests use. The file is the user's to edit, so a value of the wrong type
is one clear error, and failing to remember a folder never stops the command that was given it.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import platformdirs

from engines.layout import DOWNLOAD_COMMAND, ModelsMissingError, missing_models

#: what a new user needs before DOWNLOAD_COMMAND works: the export tools (PyTorch; its CPU build is enough)
EXPORT_TOOLS_HINT = (
    "the export tools come first: pip install -r requirements-export.txt "
    "--extra-index-url https://download.pytorch.org/whl/cpu (a CPU-only torch is enough)"
)


log = logging.getLogger(__name__)

APP_NAME = "liveportrait-rt"


def config_dir() -> Path:
    """$LIVEPORTRAIT_CONFIG_DIR, else the platform's per-user config folder (roaming on Windows, as before)."""
    override = os.environ.get("LIVEPORTRAIT_CONFIG_DIR")
    if override:
        return Path(override)
    return platformdirs.user_config_path(APP_NAME, appauthor=False, roaming=True)


def data_dir() -> Path:
    """Where the app makes the models when asked to (the window's first-run panel): $LIVEPORTRAIT_DATA_DIR, else the
    platform's per-user data folder (~/.local/share/liveportrait-rt on Linux)."""
    override = os.environ.get("LIVEPORTRAIT_DATA_DIR")
    return Path(override) if override else platformdirs.user_data_path(APP_NAME, appauthor=False)


def settings_path() -> Path:
    return config_dir() / "settings.json"


def load_settings() -> dict[str, Any]:
    """The saved settings; an unreadable file counts as empty rather than stopping the app."""
    try:
        data = json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(**values: Any) -> None:
    """Merge values into the settings file (written atomically)."""
    data = load_settings() | values
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def resolve_models_dir(cli_value: Path | None = None) -> Path:
    """The models folder to run from, or ModelsMissingError saying which files are missing and how to make them."""
    candidates = [
        ("--models", cli_value),
        ("$LIVEPORTRAIT_MODELS", os.environ.get("LIVEPORTRAIT_MODELS")),
        ("the saved setting", load_settings().get("models_dir")),
    ]
    for origin, value in candidates:
        if value:
            if not isinstance(value, (str, Path)):  # a hand-edited settings.json
                raise ModelsMissingError(
                    f"{settings_path()}: \"models_dir\" must be a folder path in quotes, not {value!r}; "
                    "fix or delete that entry, or pass --models DIR"
                )
            folder = Path(value).expanduser()
            missing = missing_models(folder)
            if missing:
                raise ModelsMissingError(
                    f"models folder {folder} (from {origin}) lacks {', '.join(missing)}; create it with: {DOWNLOAD_COMMAND}"
                    f" ({EXPORT_TOOLS_HINT})"
                )
            if origin == "--models":  # remembered, so the next start (the app without arguments) finds it
                remember_models_dir(folder)
            return folder
    default = Path("models")
    if default.is_dir() and not missing_models(default):
        return default
    raise ModelsMissingError(
        f"no models folder is configured; create one with: {DOWNLOAD_COMMAND} (or pass --models DIR); {EXPORT_TOOLS_HINT}"
    )


def remember_models_dir(folder: Path) -> None:
    """Save `folder` for the next start; a config folder that cannot be written only costs a warning."""
    try:
        save_settings(models_dir=str(Path(folder).resolve()))
    except OSError as exc:
        log.warning("could not remember the models folder in %s (%s); pass --models again next time",
                    settings_path(), exc.strerror or exc)
