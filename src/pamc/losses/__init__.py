"""Losses by name: ``pamc.losses.build("ll-r", delta=0.5)``.

One module per family; each registers its classes with ``@register(name)``.
"""
from __future__ import annotations

import inspect

from ..errors import PamcError
from ..registry import Registry
from .base import PartialLabelLoss

LOSSES: Registry[type] = Registry("loss")
register = LOSSES.register


def build(name: str, **params) -> PartialLabelLoss:
    cls = LOSSES.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = [p for p in accepted if p != "self"]
        raise PamcError(f"loss {name!r} takes no parameter {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}")
    return cls(**params)


def names() -> list[str]:
    return LOSSES.names()


from . import assume_negative, asymmetric, entropy, expected_positive, large_loss  # noqa: E402,F401  (registration)

__all__ = ["build", "names", "register", "PartialLabelLoss", "LOSSES"]
