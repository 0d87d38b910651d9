"""Full-label BCE and assume-negative (AN): every unobserved label is treated as negative.

AN-LS and WAN follow Cole et al. (spec 3) in their probability form with ``nlog``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ..errors import PamcError
from .base import Param, PartialLabelLoss, known_label_loss, nlog, nlog_bce, positive_part


@register("an")
class AssumeNegative(PartialLabelLoss):
    """BCE against AN targets, mean over all B*C entries (exact logits-BCE, as the BoostLU code)."""

    def compute(self, logits, observed, epoch, index):
        return F.binary_cross_entropy_with_logits(logits, positive_part(observed))


@register("full")
class FullLabel(AssumeNegative):
    """BCE against the full labels: the upper bound.  The engine feeds it the full 0/1 matrix."""

    uses_full_labels = True


@register("an-ls")
class AssumeNegativeLabelSmoothing(PartialLabelLoss):
    """AN with symmetric label smoothing: targets 1-epsilon / epsilon (0.9 / 0.1 by default).

    Smoothing keeps the false negatives among the assumed negatives from being pushed to 0.
    """

    params = {"epsilon": Param(0.0, 0.5, high_open=True)}  # the reference uses 0.1

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        self.epsilon = float(epsilon)

    def compute(self, logits, observed, epoch, index):
        target = positive_part(observed) * (1.0 - 2.0 * self.epsilon) + self.epsilon
        return nlog_bce(logits.sigmoid(), target).mean()


@register("wan")
class WeakAssumeNegative(PartialLabelLoss):
    """AN with the assumed negatives down-weighted by gamma = 1/(C-1), C = number of classes.

    With one positive per image this balances the positive against the C-1 assumed negatives.
    Observed negatives (-1, absent in SPML) are real labels and keep weight 1.
    """

    def compute(self, logits, observed, epoch, index):
        num_classes = logits.shape[1]
        if num_classes < 2:
            raise PamcError("wan needs at least 2 classes (its weight is 1/(C-1)); use 'an' instead")
        probs = logits.sigmoid()
        assumed = torch.where(observed == 0, nlog(1.0 - probs) / (num_classes - 1), torch.zeros_like(probs))
        return (known_label_loss(probs, observed) + assumed).mean()
