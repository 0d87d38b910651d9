"""Losses with vision-language pseudo-labels: VLPL (Xing et al. CVPRW'24) and AEVLP's GPR
(Tran et al. ICCV'25), spec since-2024 sections 3 and 4.

A frozen vision-language model (CLIP, or pamc's scene stand-in) scores every class of every
training image once (`pamc pseudo-label`); the loss turns the scores into pseudo-labels with its
rule (`pamc.pseudo`) when it is built, and looks them up by the batch's dataset index.  The engine
passes ``scores`` (the run's ``--scores`` file), ``init_observed`` and ``full_labels`` to losses
whose constructor asks for them; `results()` hands the pseudo-labels' quality to results.json.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import register
from .. import pseudo as rules
from ..errors import PamcError
from .base import Param, PartialLabelLoss, known_label_loss, nlog, nlog_bce
from .gr import GeneralizedRobust


class PseudoLabelled(PartialLabelLoss):
    """A loss with one pseudo-label per entry (1 / 0 / -1), fixed for the run: given directly as
    ``pseudo_labels`` (N x C) or made from ``scores`` (N x V x C) by `rule`."""

    def rule(self, scores: torch.Tensor, observed) -> torch.Tensor:
        raise NotImplementedError

    def init_pseudo_labels(self, pseudo_labels, scores, init_observed, full_labels) -> None:
        if pseudo_labels is None:
            if scores is None:
                raise PamcError(f"{self.name} needs vision-language scores of the training images: make them with "
                                f"`pamc pseudo-label` (or bring a .npy) and pass --scores FILE (on the scenes: --scores stand-in)")
            pseudo_labels = self.rule(rules.as_views(scores), init_observed)
        pseudo_labels = torch.as_tensor(pseudo_labels).to(torch.int8)
        if pseudo_labels.ndim != 2:
            raise PamcError(f"{self.name}: pseudo_labels must be N x C (got shape {tuple(pseudo_labels.shape)})")
        self.register_buffer("pseudo_labels", pseudo_labels, persistent=False)  # made again on resume
        self.quality = rules.quality_or_none(pseudo_labels, init_observed, full_labels)

    def lookup(self, index: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        if index is None:
            raise PamcError(f"{self.name} looks its pseudo-labels up by dataset index; call it with index=")
        return self.pseudo_labels[index.to(self.pseudo_labels.device)].to(like.device)

    def results(self) -> dict:
        pseudo = self.pseudo_labels
        summary = {"pseudo_positives": int((pseudo == 1).sum()), "pseudo_negatives": int((pseudo == -1).sum())}
        if self.quality is not None:
            summary.update(self.quality)
        return {"pseudo_labels": summary}


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(p) = -(p log p + (1-p) log(1-p)) in the nlog form of the EM code (eps 1e-5)."""
    return nlog_bce(probs, probs)


@register("vlpl")
class VisionLanguagePseudoLabel(PseudoLabelled):
    """Observed positives nlog(p); unobserved pseudo-positives beta * (rho nlog(p) + (1-rho) nlog(1-p));
    other unobserved entries -alpha * H(p) (entropy maximisation); sum over entries / (B * C).

    Pseudo-positives: the global view's score > ``threshold`` (`pseudo.vlpl_pseudo_labels`).
    Until ``warmup_epochs`` epochs are done the loss is plain EM (the reference's ``warmup_epoch``,
    whose value is unpublished; 0 here).  ``negative_fraction`` > 0 turns on the reference's
    pseudo-negative rule, which its loss ignores; pamc gives those entries nlog(1 - p) [pamc's
    choice, off by default].  Observed negatives (-1) cost nlog(1 - p), as in pamc's EM.
    """

    params = {"alpha": Param(low=0), "beta": Param(low=0), "rho": Param(0, 1), "threshold": Param(0, 1),
              "warmup_epochs": Param(low=0, integer=True), "negative_fraction": Param(0, 1, high_open=True)}

    def __init__(self, alpha: float = 0.2, beta: float = 0.7, rho: float = 0.9, threshold: float = 0.3,
                 warmup_epochs: int = 0, negative_fraction: float = 0.0, pseudo_labels=None, scores=None,
                 init_observed=None, full_labels=None):
        super().__init__()
        self.alpha, self.beta, self.rho = float(alpha), float(beta), float(rho)
        self.threshold, self.negative_fraction = float(threshold), float(negative_fraction)
        self.warmup_epochs = int(warmup_epochs)
        self.init_pseudo_labels(pseudo_labels, scores, init_observed, full_labels)

    def rule(self, scores, observed):
        return rules.vlpl_pseudo_labels(scores, self.threshold, self.negative_fraction)

    def compute(self, logits, observed, epoch, index):
        probs = logits.sigmoid()
        unobserved = -self.alpha * entropy(probs)
        if epoch > self.warmup_epochs:
            pl = self.lookup(index, logits)
            soft_positive = self.beta * (self.rho * nlog(probs) + (1 - self.rho) * nlog(1 - probs))
            unobserved = torch.where(pl == 1, soft_positive, torch.where(pl == -1, nlog(1 - probs), unobserved))
        return torch.where(observed == 0, unobserved, known_label_loss(probs, observed)).mean()


def _two_numbers(value) -> tuple[float, float]:
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
        raise PamcError(f"gpr: lam must be 2 numbers [lam1, lam2] with 0 <= lam2 <= lam1 <= 1 (got {value!r})")
    lam1, lam2 = float(value[0]), float(value[1])
    if not 0 <= lam2 <= lam1 <= 1:
        raise PamcError(f"gpr: lam must be 2 numbers [lam1, lam2] with 0 <= lam2 <= lam1 <= 1 (got {value!r})")
    return lam1, lam2


@register("gpr")
class GeneralizedPseudoRobust(PseudoLabelled, GeneralizedRobust):
    """AEVLP's GPR: GR loss (K, V and their schedules as `gr`, on detached p) where the unobserved
    entries without a pseudo-label keep GR's term, pseudo-positives cost
    (1 - V') (rho nlog(p) + (1 - rho) nlog(1 - p)) with V' = V clipped into [1 - lam1, 1 - lam2],
    plus ``reg`` * (mean_b sum_c p_bc - k)^2 / C^2 (k: the expected positives per image, the
    engine passes the dataset's).  Logs with eps 1e-7.

    Pseudo-positives: AEVLP's DAMP rule with ``eta0``, ``tau``, ``top_k`` (`pseudo.aevlp_pseudo_labels`).
    """

    params = {**GeneralizedRobust.params, "rho": Param(0, 1), "reg": Param(low=0), "k": Param(low=0, low_open=True),
              "eta0": Param(0, 1), "tau": Param(0, 1), "top_k": Param(low=1, integer=True)}

    def __init__(self, beta=(0.0, 2.0, -2.0, -2.0), gauss=(0.5, 2.0, 0.8, 0.5), q2: float = 0.01, q3: float = 1.0,
                 lam=(0.7, 0.4), rho: float = 0.9, reg: float = 0.05, k: float = 1.5, eta0: float = 0.0,
                 tau: float = 0.5, top_k: int = 3, num_epochs: int = 8, linear_init_epochs: int = 0,
                 pseudo_labels=None, scores=None, init_observed=None, full_labels=None):
        GeneralizedRobust.__init__(self, beta, gauss, q2, q3, num_epochs, linear_init_epochs)
        self.lam = _two_numbers(lam)
        self.rho, self.reg, self.k = float(rho), float(reg), float(k)
        self.eta0, self.tau, self.top_k = float(eta0), float(tau), int(top_k)
        if init_observed is None and pseudo_labels is None:
            raise PamcError("gpr's rule needs the observed labels (dense); give pseudo_labels= for sparse label sets")
        self.init_pseudo_labels(pseudo_labels, scores, init_observed, full_labels)

    def rule(self, scores, observed):
        return rules.aevlp_pseudo_labels(scores, observed, self.eta0, self.tau, self.top_k)

    def compute(self, logits, observed, epoch, index):
        t = self.terms(logits, epoch)
        lam1, lam2 = self.lam
        v_clipped = t["v"].clamp(1 - lam1, 1 - lam2)
        pseudo_positive = (1 - v_clipped) * (self.rho * t["positive"] + (1 - self.rho) * t["negative"])
        unobserved = torch.where(self.lookup(index, logits) == 1, pseudo_positive, t["unobserved"])
        entries = torch.where(observed == 1, t["positive"], torch.where(observed < 0, t["negative"], unobserved))
        prior = self.reg * (t["probs"].sum(dim=1).mean() - self.k) ** 2 / logits.shape[1] ** 2
        return entries.mean() + prior
