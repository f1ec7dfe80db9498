"""Where the user's models folder is: command line, then $LIVEPORTRAIT_MODELS, then the saved setting (the last
folder given with --models), then ./models.

The settings file lives in the user's config folder ($LIVEPORTRAIT_CONFIG_DIR overrides it, which tests use).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from engines.layout import DOWNLOAD_COMMAND, ModelsMissingError, missing_models


def config_dir() -> Path:
    override = os.environ.get("LIVEPORTRAIT_CONFIG_DIR")
    if override:
        return Path(override)
    base = os.environ.get("APPDATA") or os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "liveportrait-rt"


def load_settings() -> dict[str, Any]:
    """The saved settings; an unreadable file counts as empty rather than stopping the app."""
    path = config_dir() / "settings.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(**values: Any) -> None:
    """Merge values into the settings file (written atomically)."""
    data = load_settings() | values
    path = config_dir() / "settings.json"
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
            folder = Path(value).expanduser()
            missing = missing_models(folder)
            if missing:
                raise ModelsMissingError(
                    f"models folder {folder} (from {origin}) lacks {', '.join(missing)}; create it with: {DOWNLOAD_COMMAND}"
                )
            if origin == "--models":  # remembered, so the next start (the app without arguments) finds it
                save_settings(models_dir=str(folder.resolve()))
            return folder
    default = Path("models")
    if default.is_dir() and not missing_models(default):
        return default
    raise ModelsMissingError(f"no models folder is configured; create one with: {DOWNLOAD_COMMAND} (or pass --models DIR)")
