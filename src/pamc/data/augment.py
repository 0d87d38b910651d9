"""Training augmentation beyond flips: RandAugment and Cutout, per image, on the training device.

`torchvision.transforms.v2.RandAugment` works on uint8 tensors on any device, but given a batch
it draws ONE op sequence for the whole batch; pamc applies it image by image instead, so every
image gets its own ops and magnitudes, as the reference pipelines (ASL/Hill, per-image PIL
transforms).  Cutout follows ASL's `CutoutPIL(cutout_factor=0.5)`, applied before RandAugment as
there: a square of half the image's side around a uniform centre (clipped at the border), filled
with a random colour.

Randomness: each image's draws come from the CPU generator seeded with (seed, epoch, dataset
index), inside `torch.random.fork_rng`, so the augmentation of an image depends on nothing else:
not the batch it is in, the number of processes, or where a run was resumed, and the global RNG
streams are left as they were.  The cost is a Python loop over the batch (a few small kernels
per image; `benchmarks/bench_logging.py --augment` measures it).
"""
from __future__ import annotations

from typing import Optional

import torch

AUGMENTS = ("none", "randaugment", "randaugment+cutout")
_MIX = 0x9E3779B97F4A7C15


def image_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one image in one epoch (splitmix-style mixing of the three numbers)."""
    z = (int(seed) * 1_000_003 + int(epoch)) * 0x100000001B3 + int(index) + _MIX
    z &= (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) >> 1


class BatchAugment:
    """`augment(x, index, epoch)`: uint8 B x C x H x W -> augmented uint8 batch (same device)."""

    def __init__(self, kind: str, seed: int, num_ops: int = 2, magnitude: int = 9, cutout: float = 0.5):
        from torchvision.transforms import v2

        if kind not in AUGMENTS or kind == "none":
            raise ValueError(f"augment must be one of {AUGMENTS[1:]} (got {kind!r})")
        self.kind, self.seed, self.cutout = kind, int(seed), float(cutout) if "cutout" in kind else 0.0
        self.randaugment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    @classmethod
    def from_config(cls, cfg) -> Optional["BatchAugment"]:
        return None if cfg.augment == "none" else cls(cfg.augment, cfg.seed)

    def _cutout(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        ch, cw = int(self.cutout * h + 0.5), int(self.cutout * w + 0.5)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        colour = torch.randint(0, 256, (img.shape[0], 1, 1), dtype=torch.uint8).to(img.device)
        img = img.clone()
        img[:, y1:y2, x1:x2] = colour
        return img

    def __call__(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"augmentation works on uint8 images (got {x.dtype})")
        out = torch.empty_like(x)
        with torch.random.fork_rng(devices=[]):
            for i, k in enumerate(index.tolist()):
                torch.default_generator.manual_seed(image_seed(self.seed, epoch, k))
                img = x[i]
                if self.cutout:
                    img = self._cutout(img)
                out[i] = self.randaugment(img)
        return out
