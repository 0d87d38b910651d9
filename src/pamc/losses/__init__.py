"""Losses by name: ``pamc.losses.build("ll-r", delta=0.5)``.

One module per family; each registers its classes with ``@register(name)``.
"""
from __future__ import annotations

from ..registry import Registry, check_keywords
from .base import PartialLabelLoss

LOSSES: Registry[type] = Registry("loss")
register = LOSSES.register


def build(name: str, **params) -> PartialLabelLoss:
    cls = LOSSES.get(name)
    check_keywords(cls, params, f"loss {name!r}", "parameter")
    return cls(**params)


def names() -> list[str]:
    return LOSSES.names()


from . import assume_negative, asymmetric, entropy, expected_positive, gr, large_loss, robust  # noqa: E402,F401  (registration)

__all__ = ["build", "names", "register", "PartialLabelLoss", "LOSSES"]
