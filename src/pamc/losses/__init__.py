"""Losses by name: ``pamc.losses.build("ll-r", delta=0.5)``.

One module per family; each registers its classes with ``@register(name)``.
"""
from __future__ import annotations

from ..registry import Registry, check_keywords
from .base import PartialLabelLoss

LOSSES: Registry[type] = Registry("loss")


def register(name: str):
    """Register a loss class under `name` (which its messages use)."""
    def add(cls: type) -> type:
        cls.name = name
        return LOSSES.register(name)(cls)
    return add


def check_params(name: str, params: dict) -> type:
    """Refuse unknown parameters and values outside a parameter's declared range (`base.Param`),
    before any work; returns the loss class."""
    cls = LOSSES.get(name)
    check_keywords(cls, params, f"loss {name!r}", "parameter")
    cls.check_params(name, params)
    return cls


def build(name: str, **params) -> PartialLabelLoss:
    return check_params(name, params)(**params)


def names() -> list[str]:
    return LOSSES.names()


from . import assume_negative, asymmetric, entropy, expected_positive, gr, large_loss, robust  # noqa: E402,F401  (registration)

__all__ = ["build", "check_params", "names", "register", "PartialLabelLoss", "LOSSES"]
