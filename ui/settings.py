"""The window's small persistent state (recent portraits, camera, options): window.json in the config dir.

It is a separate file from engines/settings.py's settings.json (the models folder), so each is rewritten whole
without losing the other's keys.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engines.settings import config_dir

log = logging.getLogger(__name__)

#: how many recent portraits the picker remembers
MAX_RECENT = 8


def default_settings_path() -> Path:
    """window.json in the app's config dir ($LIVEPORTRAIT_CONFIG_DIR overrides it)."""
    return config_dir() / "window.json"


@dataclass
class Settings:
    recent_portraits: list[str] = field(default_factory=list)
    camera: str = ""  # camera index as text, or a video path; empty = first camera found
    resolution: str = "640x480"
    fps: int = 30
    options: dict[str, object] = field(default_factory=dict)
    smoothing: float = 0.3
    lock_scale: bool = False
    mirror: bool = False
    geometry: str = ""  # QMainWindow.saveGeometry() in base64: the window reopens where and how big it was

    @classmethod
    def load(cls, path: Path) -> "Settings":
        """The saved settings, or defaults when the file is absent or unreadable (a broken file must not stop the app)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            defaults = cls()
            # a hand-edited value of the wrong type (e.g. "fps": "30") falls back to its default, key by key
            settings = cls(**{
                f.name: data[f.name] for f in fields(cls)
                if f.name in data and same_kind(data[f.name], getattr(defaults, f.name))
            })
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable settings %s: %s", path, exc)
            return cls()
        settings.recent_portraits = [p for p in settings.recent_portraits if Path(p).is_file()][:MAX_RECENT]
        return settings

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    def add_recent(self, portrait: Path) -> None:
        """Put `portrait` first in the recent list, without duplicates."""
        text = str(Path(portrait).resolve())
        self.recent_portraits = [text, *(p for p in self.recent_portraits if p != text)][:MAX_RECENT]


def same_kind(value: object, default: object) -> bool:
    """True when a loaded value can stand where the default stands (an int is fine for a float)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))
