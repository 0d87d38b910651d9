"""Class activation maps in absolute units, and the image plumbing the explain tools share.

The maps are *not* min-max normalised: the paper's finding is about their scale (a partial-label
model attends to the same regions as a full-label one, with smaller positive attributions), and
per-map normalisation would erase exactly that.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..activation import Alpha
from ..data.images import decode
from ..data.loading import image_batches
from ..data.transforms import normalize_uint8
from ..errors import PamcError
from ..models import eval_mode
from ..runtime import Runtime


def as_size(size: int | Sequence[int] | None) -> Optional[tuple[int, int]]:
    """An image size given as S or (H, W) -> (H, W); None stays None."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise PamcError(f"image size must be S or (H, W) with positive sides, got {size}")
    return size


def resolve_classes(classes: Sequence[int | str], class_names: Optional[Sequence[str]], num_classes: int) -> list[int]:
    """Class indices and/or names -> indices; unknown names or out-of-range indices are errors."""
    lookup = {name: i for i, name in enumerate(class_names or ())}
    out = []
    for c in classes:
        if isinstance(c, (int, np.integer)):
            if not 0 <= int(c) < num_classes:
                raise PamcError(f"class index {c} is out of range; the model has {num_classes} classes (0..{num_classes - 1})")
            out.append(int(c))
        elif not class_names:
            raise PamcError(f"class {c!r} is given by name but the model has no class names; pass class indices")
        elif c not in lookup:
            raise PamcError(f"unknown class {c!r}; valid: {', '.join(class_names)}")
        else:
            out.append(lookup[c])
    return out


def resize_batch(x: torch.Tensor, size: Optional[tuple[int, int]]) -> torch.Tensor:
    """Resize a B x 3 x H x W batch to (H, W) (aspect ratio not kept, as in the training pipeline)."""
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    from torchvision.transforms.v2 import functional as TF  # here: torchvision costs ~2 s to import

    return TF.resize(x, list(size), antialias=True)


def iter_image_batches(images, batch_size: int = 64, size=None) -> Iterator[torch.Tensor]:
    """Image batches from a tensor (N x 3 x H x W, uint8 or normalised float), a dataset of
    3 x H x W uint8 images (e.g. `Split.images`), or an iterable of batches (tuples: first item)."""
    size = as_size(size)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if torch.is_tensor(images):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        for start in range(0, images.shape[0], batch_size):
            yield resize_batch(images[start:start + batch_size], size)
    elif isinstance(images, Dataset):
        index = torch.arange(len(images))
        for batch in image_batches(images, list(index.split(batch_size))):
            yield resize_batch(batch, size)
    else:
        for batch in images:
            yield resize_batch(batch[0] if isinstance(batch, (tuple, list)) else batch, size)


def split_images(split, count, size=None, batch_size: int = 64) -> torch.Tensor:
    """The first `count` images of a dataset `Split` (or those at the positions `count` lists) as
    uint8 N x 3 x H x W, resized to `size`."""
    index = range(count) if isinstance(count, int) else list(count)
    return torch.cat(list(iter_image_batches(Subset(split.images, index), batch_size, size)))


def split_image_names(split, count: int) -> list[str]:
    """Names of a split's first `count` images: their identifiers, else image00000, image00001, ..."""
    return [str(n) for n in (split.names or [f"image{i:05d}" for i in range(len(split))])[:count]]


def file_images(inputs: Sequence[str | Path], size=None, limit: Optional[int] = None) -> tuple[list[Path], list[torch.Tensor]]:
    """Image files and the images in folders (the first `limit`): (paths, uint8 3 x H x W images
    resized to `size`, else at their own size)."""
    from ..inference import image_paths

    files = image_paths([str(i) for i in inputs])[:limit]
    return files, [resize_batch(decode(f)[None], as_size(size))[0] for f in files]


def top_classes(probs: torch.Tensor, top_k: int) -> list[list[int]]:
    """Per image (row of N x C probabilities), its `top_k` classes, best first."""
    if int(top_k) < 1:
        raise PamcError(f"top_k must be >= 1 (got {top_k})")
    return probs.topk(min(int(top_k), probs.shape[1]), dim=1).indices.tolist()


def model_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images are ImageNet-normalised; float images are taken as already normalised."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise PamcError(f"expected images as N x 3 x H x W, got shape {tuple(x.shape)}")
    x = x.to(device)
    if x.dtype == torch.uint8:
        return normalize_uint8(x)
    if not x.is_floating_point():
        raise PamcError(f"images must be uint8 (0..255) or normalised floats, got {x.dtype}")
    return x.float()


def resolve_device(device: str) -> torch.device:
    """A device name as the CLI takes it ("auto" = CUDA if visible, else CPU)."""
    return Runtime.create(device).device


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def cam_batches(model, images, batch_size: int = 64, image_size=None) -> Iterator[torch.Tensor]:
    """Raw CAMs batch by batch (on the model's device), for callers that reduce them on the fly."""
    device = model_device(model)
    with eval_mode(model):
        for batch in iter_image_batches(images, batch_size, image_size):
            with torch.inference_mode():
                maps = model.cams(model_input(batch, device)).float()
            yield maps


def cams(model, images, classes: Optional[Sequence[int | str]] = None, boosted: bool = False,
         alpha: Optional[Alpha] = None, batch_size: int = 64, class_names: Optional[Sequence[str]] = None,
         image_size=None) -> torch.Tensor:
    """Raw CAMs (N x C' x h x w, float32 on the CPU) of a `CamClassifier`, in attribution units.

    `images`: see `iter_image_batches` (uint8 images are ImageNet-normalised, float ones taken as
    normalised).  `classes` (indices or names, names looked up in `class_names`) selects channels,
    in the given order; `boosted=True` or an `alpha` applies the model's form of BoostLU with
    `alpha` (default: the model's alpha).  The model runs in eval mode (the checkpoint's batch-norm statistics).
    """
    index = None if classes is None else resolve_classes(classes, class_names, model.num_classes)
    boost = alpha if alpha is not None else (model.alpha if boosted else 1.0)
    out = [model.boost(maps, boost)[:, slice(None) if index is None else index].cpu()
           for maps in cam_batches(model, images, batch_size, image_size)]
    if not out:
        raise PamcError("no images were given")
    return torch.cat(out)


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of N x C x h x w maps (or one C x h x w / h x w map) to the image size."""
    size = as_size(size)
    squeeze = 4 - maps.ndim
    if squeeze < 0:
        raise PamcError(f"expected maps as N x C x h x w, C x h x w or h x w, got shape {tuple(maps.shape)}")
    x = maps.reshape((1,) * squeeze + tuple(maps.shape)).float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.reshape(tuple(maps.shape[:-2]) + size)
