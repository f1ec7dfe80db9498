"""The test tools requirements-dev.txt installs: a missing one is a broken test environment, so the tests that need
it fail with the install command (a skip would hide it from the run)."""
from __future__ import annotations

import importlib
from types import ModuleType

import pytest

DEV_INSTALL = "pip install -r requirements-dev.txt"


def dev_module(module: str, package: str) -> ModuleType:
    """`module`, imported; a failed test (or collection, at module level) naming `package` and the install
    command when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{package} is not installed ({exc}); install the test tools: {DEV_INSTALL}", pytrace=False)
