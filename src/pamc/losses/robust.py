"""Hill, focal margin and SPLC (Zhang et al., "Simple and Robust Loss Design for Multi-Label
Learning with Missing Labels"; spec 2).

All three start from assume-negative targets (observed positive 1, everything else 0, observed
negatives included) and make the loss robust to the false negatives among them: Hill bounds the
cost of a confident negative, focal margin shifts the positives' logits by a margin, SPLC turns
confident unobserved predictions into positives for the current step.  Hill's positive term and
SPLC's loss are focal margin, so they share ``focal_margin``.

Reduction: the reference sums over the batch, and so does pamc by default (``reduction: sum``);
``reduction: mean`` puts these losses on the scale of the other pamc losses.  The sum's gradient
is B*C times the mean's, so under SGD the same learning rate acts B*C times larger.  Adam, which
pamc trains with, divides the gradient by its running scale, so there the choice changes the
step little (through Adam's epsilon, and the smaller last batch that a sum weighs less).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from .base import Param, PartialLabelLoss, positive_part

REDUCTIONS = ("sum", "mean")


def focal_margin(shifted: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-entry -pt^gamma * (t log sigmoid(x') + (1-t) log sigmoid(-x')), pt = 1-q or q (q = sigmoid(x')).

    `shifted` holds x', the logits with the margin already subtracted where wanted.  The focal
    weight pt^gamma stays in the autograd graph, as in the reference.
    """
    q = shifted.sigmoid()
    weight = ((1 - q) * target + q * (1 - target)).pow(gamma)
    return -weight * (target * F.logsigmoid(shifted) + (1 - target) * F.logsigmoid(-shifted))


class RobustLoss(PartialLabelLoss):
    """Checks and stores margin, gamma and the reduction; sums or averages the per-entry losses."""

    params = {"margin": Param(low=0), "gamma": Param(low=0), "reduction": Param(choices=REDUCTIONS)}  # 1.0, 2, sum

    def __init__(self, margin: float, gamma: float, reduction: str):
        super().__init__()
        self.margin = float(margin)
        self.gamma = float(gamma)
        self.reduction = reduction

    def reduce(self, loss: torch.Tensor) -> torch.Tensor:
        """Mean, or the sum over the global batch.

        The engine weights each process's loss by its share of the global batch, which turns
        local means into the global mean but local sums into a weighted mix of them.  Scaling
        the local sum by (global batch / local batch) undoes that weight, so under DDP the
        gradient is that of the sum over the global batch, as in one process.
        """
        if self.reduction == "mean":
            return loss.mean()
        local = loss.shape[0]
        global_batch = self.gather(torch.zeros(local, device=loss.device)).numel()
        return loss.sum() * (global_batch / local)


@register("hill")
class Hill(RobustLoss):
    """Positives: focal margin -(1 - sigmoid(x - m))^gamma log sigmoid(x - m).  Negatives (the
    unobserved and the observed ones alike): (lamb - p) p^2, which is bounded, so a confident
    false negative costs little.  lamb >= 1 keeps it non-negative on [0, 1]."""

    name = "hill"

    params = {**RobustLoss.params, "lamb": Param(low=1)}  # (lamb - p) * p^2 never negative; the reference: 1.5

    def __init__(self, lamb: float = 1.5, margin: float = 1.0, gamma: float = 2.0, reduction: str = "sum"):
        super().__init__(margin, gamma, reduction)
        self.lamb = float(lamb)

    def compute(self, logits, observed, epoch, index):
        target = positive_part(observed)
        positive = focal_margin(logits - self.margin, torch.ones_like(target), self.gamma)
        probs = logits.sigmoid()
        negative = (self.lamb - probs) * probs.pow(2)
        return self.reduce(target * positive + (1 - target) * negative)


@register("focal-margin")
class FocalMargin(RobustLoss):
    """Focal loss with the positives' logits shifted down by the margin m: x' = x - m where t = 1."""

    name = "focal-margin"

    def __init__(self, margin: float = 1.0, gamma: float = 2.0, reduction: str = "sum"):
        super().__init__(margin, gamma, reduction)

    def compute(self, logits, observed, epoch, index):
        target = positive_part(observed)
        return self.reduce(focal_margin(logits - self.margin * target, target, self.gamma))


@register("splc")
class SPLC(RobustLoss):
    """Focal margin whose unobserved targets with sigmoid(x) > tau become 1 for this step.

    From epoch `change_epoch` on (1-based; default 2, the reference's ``change_epoch = 1``
    counted from 0) the correction is recomputed every batch, from the detached predictions, and
    never stored.  The margin stays on the observed positives only; corrected entries keep
    x' = x.  Observed negatives (-1, which the reference never has) are labels, not missing
    ones: they are never corrected.  ``last_selected`` marks the corrected entries.
    """

    name = "splc"

    #: the reference: tau 0.6; change_epoch 2 starts the correction in the second epoch
    params = {**RobustLoss.params, "tau": Param(0, 1, low_open=True, high_open=True),
              "change_epoch": Param(low=1, integer=True)}

    def __init__(self, tau: float = 0.6, change_epoch: int = 2, margin: float = 1.0, gamma: float = 2.0,
                 reduction: str = "sum"):
        super().__init__(margin, gamma, reduction)
        self.tau = float(tau)
        self.change_epoch = change_epoch

    def compute(self, logits, observed, epoch, index):
        target = positive_part(observed)
        shifted = logits - self.margin * target
        if epoch >= self.change_epoch:
            corrected = (observed == 0) & (shifted.detach().sigmoid() > self.tau)
            self.last_selected = corrected
            target = torch.where(corrected, torch.ones_like(target), target)
        return self.reduce(focal_margin(shifted, target, self.gamma))
