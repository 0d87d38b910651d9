"""Batch transforms run on the training device: uint8 -> normalised float, random flips.

Doing these on whole batches on the GPU (instead of per image in loader workers) keeps the
loaders to decoding only, which is where the reference pipeline spends its time.
"""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_uint8(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 B x 3 x H x W -> ImageNet-normalised float (x / 255 - mean) / std."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    return (x.to(dtype) / 255.0 - mean) / std


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Horizontally flip the images of the batch where `flip` (bool, B) is set."""
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
