"""Expected-positive regularisation (EPR) and online label estimation (ROLE), Cole et al. 2021.

Both ignore the unobserved labels in the main term and instead pull the batch's mean number of
predicted positives per image towards k, the known mean number of positives of the dataset
(not estimated, as in the reference).  The engine passes the dataset's k where it has one
(`DatasetBundle.info["expected_positives"]`, from `data.sources.BENCHMARK_FACTS` for the benchmarks).

Under DDP the batch mean uses the global batch through ``self.gather`` (the `gather` the engine passes with each call); for the regulariser's
gradient to reach every process that function must be autograd-aware
(``torch.distributed.nn.functional.all_gather``): its backward sums the gradients of all
processes, and DDP's averaging then gives exactly the single-process gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import register
from ..errors import PamcError
from .base import NUM_CLASSES, NUM_IMAGES, Param, PartialLabelLoss, known_label_loss, nlog_bce

def _reference_values() -> str:
    """The reference k of each benchmark, for help text (the facts live with the datasets)."""
    from ..data.sources.base import BENCHMARK_FACTS

    return ", ".join(f"{d} {v['expected_positives']}" for d, v in BENCHMARK_FACTS.items() if v["expected_positives"])


def _check_k(name: str, k: Optional[float]) -> float:
    if k is None:
        raise PamcError(f"loss {name!r} needs k, the expected number of positives per image "
                        f"(reference values: {_reference_values()}); pass k=<value>")
    try:
        value = float(k)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise PamcError(f"loss {name!r}: k must be a positive number of labels per image (got {k!r})")
    return value


def _logit(probs: torch.Tensor) -> torch.Tensor:
    """logit of p clipped to [1e-5, 1-1e-5], like the reference's inverse_sigmoid (in float64)."""
    return torch.logit(probs.double(), eps=1e-5).float()


def expected_positive_penalty(probs: torch.Tensor, k: float, gather) -> torch.Tensor:
    """R(p) = (mean_n sum_c p_nc - k)^2 / C^2, the mean taken over the batch `gather` returns."""
    num_classes = probs.shape[1]
    if k > num_classes:
        raise PamcError(f"k={k} expected positives per image exceeds the {num_classes} classes; "
                        f"use this dataset's k (reference values: {_reference_values()})")
    batch_mean = gather(probs.sum(dim=1)).mean()
    return (batch_mean - k) ** 2 / num_classes ** 2


@register("epr")
class ExpectedPositiveRegularization(PartialLabelLoss):
    """Observed labels only (nlog), plus the expected-positive regulariser R(p)."""

    params = {"k": Param(low=0, low_open=True, optional=True, text="a positive number of labels per image")}

    def __init__(self, k: Optional[float] = None):
        super().__init__()
        self.k = _check_k("epr", k)

    def compute(self, logits, observed, epoch, index):
        probs = logits.sigmoid()
        return known_label_loss(probs, observed).mean() + expected_positive_penalty(probs, self.k, self.gather)


@register("role")
class RegularizedOnlineLabelEstimation(PartialLabelLoss):
    """ROLE: the classifier f and a trainable label matrix g = sigmoid(Theta) teach each other.

    Theta (num_images x num_classes) lives in this loss, indexed by the batch's dataset indices;
    the engine optimises it with lr * ``param_lr_mult`` (10 in the reference).  Each side is
    trained on the observed labels and on the other side's stop-gradient predictions:
    loss = 0.5 (known(p) + known(g) + BCE(p; sg g) + BCE(g; sg p)) meaned over B*C,
    plus 0.5 (R(p) + R(g)).  Observed negatives (absent in SPML) are supervised on both sides.
    """

    #: unobserved entries start uniform in logit space on [-logit(0.6), logit(0.6)]: p in [0.4, 0.6]
    unobserved_init_max = 0.6

    params = {"num_images": NUM_IMAGES, "num_classes": NUM_CLASSES, **ExpectedPositiveRegularization.params,
              "lr_mult": Param(low=0, low_open=True), "seed": Param(integer=True)}

    def __init__(self, num_images: int, num_classes: int, k: Optional[float] = None, lr_mult: float = 10.0,
                 init_observed: Optional[torch.Tensor] = None, seed: int = 0):
        """Init as the reference (spec 3.1) but from a seeded generator: the reference is unseeded.

        `init_observed` (the training set's observed labels) starts positives at p = 0.995 and
        negatives at 0.005; without it every entry starts as unobserved.
        """
        super().__init__()
        self.k = _check_k("role", k)
        self.param_lr_mult = float(lr_mult)
        generator = torch.Generator().manual_seed(int(seed))
        q = torch.logit(torch.tensor(self.unobserved_init_max, dtype=torch.float64)).item()
        theta = (2.0 * torch.rand(num_images, num_classes, generator=generator) - 1.0) * q
        if init_observed is not None:
            observed = torch.as_tensor(init_observed, dtype=torch.float32).cpu()
            if observed.shape != theta.shape:
                raise PamcError(f"role init_observed has shape {tuple(observed.shape)}, "
                                f"expected ({num_images}, {num_classes}) = (num_images, num_classes)")
            theta[observed == 1] = _logit(torch.tensor(0.995))
            theta[observed < 0] = _logit(torch.tensor(0.005))
        self.logits = nn.Parameter(theta)

    @torch.no_grad()
    def init_from_estimates(self, probs) -> None:
        """Start Theta from label estimates, e.g. those of a linear phase (ROLE + LI, spec 5.1)."""
        probs = torch.as_tensor(probs, dtype=torch.float32)
        if probs.shape != self.logits.shape:
            raise PamcError(f"role estimates have shape {tuple(probs.shape)}, expected {tuple(self.logits.shape)}")
        self.logits.copy_(_logit(probs))

    @torch.no_grad()
    def estimates(self) -> torch.Tensor:
        """The current label estimates sigmoid(Theta) for every training image (N x C)."""
        return self.logits.sigmoid()

    def compute(self, logits, observed, epoch, index):
        if index is None:
            raise PamcError("role needs the batch's dataset indices (index=...) to look up its label estimates")
        index = torch.as_tensor(index, device=self.logits.device).long()
        if index.shape != (logits.shape[0],):
            raise PamcError(f"role got {tuple(index.shape)} indices for a batch of {logits.shape[0]} images")
        probs = logits.sigmoid()
        estimates = self.logits[index].sigmoid().to(probs.device)
        matrix = (known_label_loss(probs, observed) + known_label_loss(estimates, observed)
                  + nlog_bce(probs, estimates.detach()) + nlog_bce(estimates, probs.detach()))
        penalty = (expected_positive_penalty(probs, self.k, self.gather)
                   + expected_positive_penalty(estimates, self.k, self.gather))
        return 0.5 * matrix.mean() + 0.5 * penalty

