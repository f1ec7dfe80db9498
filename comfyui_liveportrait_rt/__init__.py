"""LivePortrait RT as a ComfyUI custom-node package: link or copy this folder into ComfyUI/custom_nodes/.

The nodes import the project's own packages (realtime, engines, export), which live beside this folder in the
repository, so the repository root goes onto sys.path from this file's real location: that works whatever name
ComfyUI imports the package under and through a symlink (resolve() follows it), without installing anything.
"""
from __future__ import annotations

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: the project's top-level packages the nodes import; another package of the same name would break them
PROJECT_PACKAGES = ("engines", "export", "realtime")


def check_project_packages(root: Path = PROJECT_ROOT) -> None:
    """Raise ImportError when a package of ours is already loaded from somewhere else (another custom node's
    `export` module, say), instead of failing later with a confusing AttributeError."""
    for name in PROJECT_PACKAGES:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None)
        if module is not None and (origin is None or not Path(origin).resolve().is_relative_to(root)):
            raise ImportError(
                f"LivePortrait RT needs its own '{name}' package from {root}, but '{name}' is already loaded from "
                f"{origin}; remove the other package or custom node that provides '{name}'"
            )


if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))
check_project_packages()

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
