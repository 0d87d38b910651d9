"""Probes for the optional packages (extras), in one leaf module that imports nothing of pamc's,
so that settings can be checked against what is installed without importing what uses them."""
from __future__ import annotations

import importlib.util


def available(package: str) -> bool:
    """Whether `package` can be imported, without importing it."""
    return importlib.util.find_spec(package) is not None


def tensorboard_available() -> bool:
    return available("tensorboard")
