"""Large-loss rejection and correction (Kim et al., CVPR 2022): LL-R, LL-Ct, LL-Cp.

Unobserved labels with the largest AN losses are probably false negatives.  Per batch, the k
largest unobserved losses (k a fraction of all B*C entries, ties at the threshold included) are
rejected (LL-R: loss 0), corrected for this step (LL-Ct: loss against target 1), or corrected
permanently (LL-Cp: also written as positives into the stored labels).  Epoch 1 is plain AN.

The fraction in epoch e is (e-1)*delta for LL-R/Ct, computed directly rather than by subtracting
delta from a running `clean_rate` as the reference code does: repeated float subtraction makes
k one too large when (e-1)*B*C*delta is an integer (spec 3.4); pamc gives the nominal k.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import register
from .base import Param, PartialLabelLoss, positive_part


class LargeLoss(PartialLabelLoss):
    correct = False  # LL-Ct / LL-Cp: selected entries get the flipped target instead of 0
    permanent = False  # LL-Cp: selected entries become observed positives for good

    #: percent of the batch's B*C entries (per epoch for LL-R / LL-Ct, in all for LL-Cp)
    params = {"delta": Param(0, 100)}

    def __init__(self, delta: float):
        super().__init__()
        self.delta = float(delta)  # percent of B*C entries per epoch

    def fraction(self, epoch: int) -> float:
        return (epoch - 1) * self.delta / 100.0

    def num_selected(self, num_entries: int, epoch: int) -> int:
        if epoch <= 1:
            return 0
        # 1e-9 absorbs float error in products such as 320 * 0.025 that are integers exactly
        return min(num_entries, math.ceil(num_entries * self.fraction(epoch) - 1e-9))

    def compute(self, logits, observed, epoch, index):
        target = positive_part(observed)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        unobserved_loss = torch.where(observed == 0, loss, torch.zeros_like(loss))
        pool = self.gather(unobserved_loss.detach().flatten())  # the global batch under DDP
        k = self.num_selected(pool.numel(), epoch)
        if k > 0:
            threshold = torch.topk(pool, k, sorted=True).values[-1]
            selected = unobserved_loss.detach() >= threshold
            self.last_selected = selected
            if self.correct:
                corrected = F.binary_cross_entropy_with_logits(logits, 1.0 - target, reduction="none")
                loss = torch.where(selected, corrected, loss)
            else:
                loss = torch.where(selected, torch.zeros_like(loss), loss)
            if self.permanent:
                self.label_updates = (selected, torch.ones_like(observed))
        return loss.mean()


@register("ll-r")
class LargeLossRejection(LargeLoss):
    def __init__(self, delta: float = 0.5):
        super().__init__(delta)


@register("ll-ct")
class LargeLossTemporaryCorrection(LargeLoss):
    correct = True

    def __init__(self, delta: float = 0.2):
        super().__init__(delta)


@register("ll-cp")
class LargeLossPermanentCorrection(LargeLoss):
    """k = ceil(B*C*delta) is constant from epoch 2; corrections are written to the stored labels."""

    correct = True
    permanent = True

    def __init__(self, delta: float = 0.1):
        super().__init__(delta)

    def fraction(self, epoch: int) -> float:
        return self.delta / 100.0
