"""Generalized robust loss (GR, Chen et al. IJCAI 2024; spec 3).

GR treats an unobserved label as a soft mix of a negative and a noisy positive: its loss blends a
generalized-cross-entropy term that pulls p up (weight K) with one that pulls p down (1 - K), both
scaled by a Gaussian V that fades entries whose prediction lies far from mu.  K and V are
functions of the detached prediction whose parameters follow linear schedules over the epochs: an
unobserved label starts close to a plain negative (K small, V flat), and as training proceeds a
confident prediction is pulled down less (K grows with p_hat) while predictions far from mu fade.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import register
from ..errors import PamcError
from .base import NUM_EPOCHS, Param, PartialLabelLoss

#: added to probabilities before the log by the GR code (not Cole et al.'s 1e-5)
GR_LOG_EPSILON = 1e-7


def _four_numbers(name: str, value, order: str) -> tuple[float, ...]:
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 4:
        raise PamcError(f"gr: {name} must be a list of 4 numbers {order} (got {value!r})")
    numbers = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in numbers):
        raise PamcError(f"gr: {name} must be 4 finite numbers {order} (got {value!r})")
    return numbers


@register("gr")
class GeneralizedRobust(PartialLabelLoss):
    """Observed positives -log(p + 1e-7); unobserved V * (K (1 - p^q2) / q2 + (1 - K) (1 - (1-p)^q3) / q3)
    with K = sigmoid(w p_hat + b), V = exp(-((p_hat - mu) / sigma)^2 / 2), p_hat = p detached; mean over B*C.

    ``beta`` = [w0, wT, b0, bT] and ``gauss`` = [mu0, sigma0, muT, sigmaT] (the reference's
    ``--beta`` and ``--alpha``, in its order; renamed since ``alpha`` is BoostLU's in pamc) are
    the schedules' end points, see `schedule`.  ``num_epochs`` is E (the engine passes the run's
    epochs) and ``linear_init_epochs`` is n, the reference's epochs before the schedules start.
    Observed negatives (-1, absent in the reference's single-positive data) cost
    -log(1 - p + 1e-7), like the positives mirrored.

    p^q2 and (1-p)^q3 are computed as exp(q * logsigmoid(+-x)): the same values, with a finite
    gradient where p rounds to 0 or 1.
    """

    #: beta and gauss (4 numbers each) are checked by `_four_numbers`, sigma > 0 with them
    params = {"q2": Param(low=0, low_open=True), "q3": Param(low=0, low_open=True),  # the reference: 0.01, 1
              "num_epochs": NUM_EPOCHS, "linear_init_epochs": Param(low=0, integer=True)}

    def __init__(self, beta=(0.0, 2.0, -2.0, -2.0), gauss=(0.5, 2.0, 0.8, 0.5), q2: float = 0.01,
                 q3: float = 1.0, num_epochs: int = 8, linear_init_epochs: int = 0):
        super().__init__()
        self.beta = _four_numbers("beta", beta, "[w0, wT, b0, bT]")
        self.gauss = _four_numbers("gauss", gauss, "[mu0, sigma0, muT, sigmaT]")
        if not (self.gauss[1] > 0 and self.gauss[3] > 0):
            raise PamcError(f"gr: sigma0 and sigmaT (gauss[1], gauss[3]) must be > 0 (got {self.gauss[1]}, "
                            f"{self.gauss[3]}); the reference uses 2 and 0.5")
        if not int(linear_init_epochs) < int(num_epochs):
            raise PamcError(f"gr needs 0 <= linear_init_epochs < num_epochs "
                            f"(got {linear_init_epochs} and {num_epochs})")
        self.q2, self.q3 = float(q2), float(q3)
        self.num_epochs, self.linear_init_epochs = int(num_epochs), int(linear_init_epochs)

    def schedule(self, epoch: int) -> tuple[float, float, float, float]:
        """(w, b, mu, sigma) in 1-based epoch e, linear from the start values to the final ones:

        w, b use max(e - n - 1, 0) / (E - n) and mu, sigma max(e - n, 0) / (E - n), the reference's
        two offsets.  Past E (only pamc's "+ LI" phase numbers its epochs that far) they stay at
        the final values rather than extrapolate.
        """
        span = self.num_epochs - self.linear_init_epochs
        late = min(max(epoch - self.linear_init_epochs - 1, 0), span) / span
        early = min(max(epoch - self.linear_init_epochs, 0), span) / span
        (w0, wT, b0, bT), (mu0, sigma0, muT, sigmaT) = self.beta, self.gauss
        return (w0 + (wT - w0) * late, b0 + (bT - b0) * late,
                mu0 + (muT - mu0) * early, sigma0 + (sigmaT - sigma0) * early)

    def compute(self, logits, observed, epoch, index):
        w, b, mu, sigma = self.schedule(epoch)
        probs = logits.sigmoid()
        p_hat = probs.detach()
        k = torch.sigmoid(w * p_hat + b)
        v = torch.exp(-0.5 * ((p_hat - mu) / sigma) ** 2)
        pull_up = (1 - torch.exp(self.q2 * F.logsigmoid(logits))) / self.q2  # (1 - p^q2) / q2
        pull_down = (1 - torch.exp(self.q3 * F.logsigmoid(-logits))) / self.q3  # (1 - (1-p)^q3) / q3
        unobserved = v * (k * pull_up + (1 - k) * pull_down)
        positive = -torch.log(probs + GR_LOG_EPSILON)
        negative = -torch.log(1 - probs + GR_LOG_EPSILON)
        return torch.where(observed == 1, positive, torch.where(observed < 0, negative, unobserved)).mean()
