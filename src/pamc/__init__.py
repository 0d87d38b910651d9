"""pamc: partially annotated multi-label classification with BoostLU and large-loss methods.

Everything is imported on first use (PEP 562), so `import pamc` and the command line start
without loading torch until a name that needs it is touched.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> (module, attribute); attribute None = the module itself
_EXPORTS = {
    "BoostLU": ("pamc.activation", "BoostLU"),
    "boostlu": ("pamc.activation", "boostlu"),
    "boost": ("pamc.posthoc", "boost"),
    "CamClassifier": ("pamc.models", "CamClassifier"),
    "TrainConfig": ("pamc.config", "TrainConfig"),
    "train": ("pamc.engine", "train"),
    "RunResult": ("pamc.engine", "RunResult"),
    "data": ("pamc.data", None),
    "explain": ("pamc.explain", None),
    "labels": ("pamc.labels", None),
    "losses": ("pamc.losses", None),
    "metrics": ("pamc.metrics", None),
    "models": ("pamc.models", None),
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from . import data, explain, labels, losses, metrics, models  # noqa: F401
    from .activation import BoostLU, boostlu  # noqa: F401
    from .config import TrainConfig  # noqa: F401
    from .engine import RunResult, train  # noqa: F401
    from .models import CamClassifier  # noqa: F401
    from .posthoc import boost  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pamc' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
