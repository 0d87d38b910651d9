"""IGNORE (Song et al., ECCV'24; spec since-2024 section 5): CAM-guided false-negative rejection.

Built on the BoostLU code base: keep only the part of the image where the observed positive's
class activation map is strong, and see which other classes' logits move.  An unobserved label
whose logit changes by more than usual when the rest of the image is removed (|z - z_m| > G) and
that is predicted above its class's running mean (z > A_c) is likely a false negative: it is left
out of the assume-negative loss.  The loss is computed on a strongly augmented view, tied to the
plain view's logits by an MSE term.

Three forward passes per step go through the engine's one seam, `training_loss(forward, batch)`:
the image (logits and CAMs), the masked image (no gradient: it only decides), the strong view.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import register
from ..data.augment import BatchAugment
from ..errors import PamcError
from .base import NUM_CLASSES, Param, PartialLabelLoss, nlog

#: where the CAM's min and max are taken: each image's own map (pamc's default) or, at each
#: position, across the batch (`functions.py: cam_minmax_norm` of the reference)
NORMS = ("image", "batch")


def cam_mask(cams: torch.Tensor, observed: torch.Tensor, size: tuple[int, int], threshold: float = 0.8,
             norm: str = "image") -> torch.Tensor:
    """B x 1 x H x W masks: 1 where the observed positive's CAM, normalised as (cam - min) / max and
    upsampled bilinearly to `size`, exceeds `threshold`; all ones for an image without exactly one
    observed positive, or whose map has no positive maximum (nothing to normalise by)."""
    if norm not in NORMS:
        raise PamcError(f"ignore: norm must be one of {', '.join(NORMS)} (got {norm!r})")
    positives = observed == 1
    single = positives.sum(dim=1) == 1
    mask = torch.ones(cams.shape[0], 1, *size, device=cams.device, dtype=cams.dtype)
    if not single.any():
        return mask
    maps = cams[single][positives[single]]  # (b, h, w): each single-positive image's positive map
    if norm == "image":
        low, high = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    else:
        low, high = maps.amin(dim=0, keepdim=True), maps.amax(dim=0, keepdim=True)
    usable = high > 0
    normalised = torch.where(usable, (maps - low) / torch.where(usable, high, 1.0), 0.0)
    up = F.interpolate(normalised.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    keep = (up > threshold).to(cams.dtype)
    if norm == "image":  # a map with nothing to normalise by leaves its image unmasked
        keep = torch.where(usable.flatten().view(-1, 1, 1, 1), keep, torch.ones_like(keep))
    mask[single] = keep
    return mask


@register("ignore")
class Ignore(PartialLabelLoss):
    """spbc * mean(nlog(p) at observed positives) + weight * mean over kept entries of AN-BCE on the
    strong view + reg * MSE(z_s, z).

    Rejection after ``warmup`` epochs: unobserved entries with |z - z_m| > G and z > A_c, where
    G <- m G + (1 - m) mean(|z - z_m| at observed positives) and A_c <- m A_c + (1 - m) mean_b z_bc
    are updated every step from the start (m = ``momentum``), after the step's rejection is
    decided [pamc's order].  The strong view is RandAugment(``num_ops``, ``magnitude``) per image
    on the training-size uint8 image (the reference applies it before its resize).  ``norm``
    chooses the CAM normalisation (`cam_mask`).  G and A are part of the run's state (resumable).
    """

    params = {"spbc": Param(low=0), "weight": Param(low=0), "reg": Param(low=0), "threshold": Param(0, 1),
              "momentum": Param(0, 1), "warmup": Param(low=0, integer=True), "norm": Param(choices=NORMS),
              "num_ops": Param(low=0, integer=True), "magnitude": Param(0, 30, integer=True),
              "num_classes": NUM_CLASSES, "seed": Param(integer=True)}

    def __init__(self, spbc: float = 0.1, weight: float = 1.0, reg: float = 0.5, threshold: float = 0.8,
                 momentum: float = 0.999, warmup: int = 3, norm: str = "image", num_ops: int = 3,
                 magnitude: int = 5, num_classes: int = 1, seed: int = 0):
        super().__init__()
        self.spbc, self.weight, self.reg = float(spbc), float(weight), float(reg)
        self.threshold, self.momentum, self.warmup, self.norm = float(threshold), float(momentum), int(warmup), norm
        self.strong = BatchAugment("randaugment", seed, num_ops=int(num_ops), magnitude=int(magnitude))
        self.register_buffer("gap", torch.zeros(()))  # G
        self.register_buffer("class_mean", torch.zeros(int(num_classes)))  # A

    def training_loss(self, forward, batch) -> torch.Tensor:
        logits, cams = forward(batch.images, cams=True)
        plain, observed = self.begin(logits, batch.observed, batch.gather)
        with torch.no_grad():
            mask = cam_mask(cams.detach(), observed, tuple(batch.images.shape[-2:]), self.threshold, self.norm)
            masked = forward(batch.images * mask.to(batch.images.dtype))
        strong = forward(batch.prepare(self.strong(batch.raw, batch.index.cpu(), batch.epoch)))
        return self.combine(plain, masked, strong, observed, batch.epoch)

    def compute(self, logits, observed, epoch, index):
        """Called on logits alone (no images: "+ LI", a check), the plain view stands for all three:
        nothing is rejected and the MSE term is 0."""
        return self.combine(logits, logits.detach(), logits, observed, epoch)

    def combine(self, plain, masked, strong, observed, epoch):
        z = plain.detach()
        gap = (z - masked).abs()
        positives = observed == 1
        if epoch > self.warmup:
            rejected = (observed == 0) & (gap > self.gap) & (z > self.class_mean)
        else:
            rejected = torch.zeros_like(positives)
        self.last_selected = rejected
        self.update_statistics(gap, z, positives)
        probs, strong_probs = plain.sigmoid(), strong.sigmoid()
        n_pos = positives.sum().clamp(min=1)
        positive = (nlog(probs) * positives).sum() / n_pos
        an_bce = torch.where(positives, nlog(strong_probs), nlog(1 - strong_probs))
        kept = ~rejected
        assume_negative = (an_bce * kept).sum() / kept.sum().clamp(min=1)
        return self.spbc * positive + self.weight * assume_negative + self.reg * F.mse_loss(strong, plain)

    @torch.no_grad()
    def update_statistics(self, gap, z, positives) -> None:
        gathered_gap, gathered_pos, gathered_z = self.gather(gap), self.gather(positives), self.gather(z)
        m = self.momentum
        count = gathered_pos.sum()
        batch_gap = (gathered_gap * gathered_pos).sum() / count.clamp(min=1)
        self.gap.copy_(torch.where(count > 0, m * self.gap + (1 - m) * batch_gap, self.gap))  # no host sync
        self.class_mean.mul_(m).add_((1 - m) * gathered_z.mean(dim=0))
