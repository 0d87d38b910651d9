"""Entropy maximisation (EM) and EM + asymmetric pseudo-labelling (EM-APL), Zhou et al. ECCV 2022.

Rather than assuming the unobserved labels negative, EM keeps their predictions uncertain by
maximising their binary entropy; APL then turns, after each epoch from the warm-up on, a share of
each class's most confidently negative unobserved labels into soft negatives.  Probability form
with ``nlog`` as the reference (spec 3, 3.2).
"""
from __future__ import annotations

import torch

from . import register
from ..errors import PamcError
from .base import NUM_EPOCHS, Param, PartialLabelLoss, known_label_loss, nlog_bce

#: stored soft negatives -p are kept in [-(1 - this), -this] so they never read as 0 or -1
SOFT_LABEL_MARGIN = 1e-6


@register("em")
class EntropyMaximization(PartialLabelLoss):
    """Observed positives nlog(p); unobserved -alpha * H(p); negatives (hard or soft) nlog(1-p).

    The reference asserts there are no negatives; pamc supervises them like full-label BCE.
    """

    params = {"alpha": Param(low=0)}

    def __init__(self, alpha: float = 0.1):
        super().__init__()
        self.alpha = float(alpha)

    def entry_losses(self, probs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        # H(p) = p nlog(p) + (1-p) nlog(1-p): the soft BCE with the (non-detached) target p itself
        entropy = nlog_bce(probs, probs)
        return torch.where(observed == 0, -self.alpha * entropy, known_label_loss(probs, observed))

    def compute(self, logits, observed, epoch, index):
        return self.entry_losses(logits.sigmoid(), observed).mean()


@register("em-apl")
class EntropyMaximizationAPL(EntropyMaximization):
    """EM plus soft pseudo-negatives: a stored -q in (-1, 0) costs beta * BCE(p; target q).

    Hard negatives (-1) keep the plain nlog(1-p) of EM (the reference would read -1 as q = 1,
    a positive target; it never has hard negatives).  `num_epochs` must be the run's epoch count:
    it sets how many labels each round converts.
    """

    params = {**EntropyMaximization.params, "beta": Param(low=0), "warmup": Param(low=1, integer=True),
              "num_epochs": NUM_EPOCHS, "neg_proportion": Param(0, 1)}

    def __init__(self, alpha: float = 0.1, beta: float = 0.9, warmup: int = 5, num_epochs: int = 10,
                 neg_proportion: float = 0.9):
        super().__init__(alpha)
        if not int(warmup) < int(num_epochs):
            raise PamcError(f"em-apl needs 1 <= warmup < num_epochs (got warmup={warmup}, num_epochs={num_epochs})")
        self.beta = float(beta)
        self.warmup = int(warmup)
        self.num_epochs = int(num_epochs)
        self.neg_proportion = float(neg_proportion)

    def entry_losses(self, probs, observed):
        soft = (observed < 0) & (observed > -1)
        return torch.where(soft, self.beta * nlog_bce(probs, -observed), super().entry_losses(probs, observed))

    def epoch_end(self, epoch, observed, initial, predict):
        """One APL round (spec 3.2) after every epoch >= warmup.

        Per class c, of the entries still exactly 0 the n_c with the lowest p become -p, where
        n_c = int(neg_proportion * U_c / (num_epochs - warmup)) and U_c counts the class's
        unobserved entries in `initial`.  Entries once pseudo-labelled are never revisited.
        """
        if epoch < self.warmup:
            return None
        probs = torch.as_tensor(predict()).to(device=observed.device, dtype=torch.float32)
        if probs.shape != observed.shape:
            raise PamcError(f"em-apl: predictions of shape {tuple(probs.shape)} do not match the labels "
                            f"{tuple(observed.shape)}; predict() must cover every training image")
        unobserved_at_start = (initial.to(observed.device) == 0).sum(dim=0).double()
        per_round = torch.floor(self.neg_proportion * unobserved_at_start / (self.num_epochs - self.warmup))
        candidates = observed == 0
        order = torch.where(candidates, probs, torch.inf).argsort(dim=0, stable=True)
        positions = torch.arange(len(probs), device=probs.device).unsqueeze(1).expand_as(order)
        rank = torch.empty_like(order).scatter_(0, order, positions)
        mask = candidates & (rank < per_round)
        soft_negatives = -probs.clamp(SOFT_LABEL_MARGIN, 1.0 - SOFT_LABEL_MARGIN)
        return mask, torch.where(mask, soft_negatives, observed)
