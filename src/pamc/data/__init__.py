"""Data sources -> one common in-memory form: a `DatasetBundle` of train/val/test `Split`s.

Every split yields uint8 images (3 x H x W) by index; labels live beside them as matrices so
the engine can look them up (and edit the observed ones) by dataset index.  Augmentation and
normalisation happen on the training device, on whole batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import PamcError
from ..registry import Registry, check_keywords

#: name -> function(**params) -> DatasetBundle
LOADERS: Registry = Registry("dataset")  # what `data.name` names: scenes, prepared


class ArrayImages(Dataset):
    """Images held in a uint8 array (N x H x W grey or N x 3 x H x W), returned as 3 x H x W."""

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        if self.images.dtype != torch.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(f"expected uint8 N x H x W or N x 3 x H x W images, got {self.images.dtype} {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.images[i]
        return img.unsqueeze(0).expand(3, -1, -1) if img.ndim == 2 else img

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """A whole batch at once (B x 3 x H x W), without a DataLoader's per-item overhead."""
        imgs = self.images[index]
        return imgs.unsqueeze(1).expand(-1, 3, -1, -1) if imgs.ndim == 3 else imgs


@dataclass
class Split:
    """One split: images by index, full 0/1 labels where known, observed 1/0/-1 labels."""

    images: Dataset
    full: Optional[np.ndarray]
    observed: Optional[Any] = None  # dense np.ndarray, or a sparse label matrix for huge label sets
    boxes: Optional[list[list[tuple[int, int, int, int, int]]]] = None  # per image: (class, x0, y0, x1, y1)
    names: Optional[Sequence[str]] = None  # image identifiers (file paths) for reports

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class DatasetBundle:
    name: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_bundle(data: dict) -> DatasetBundle:
    """The dataset factory: `{name: scenes, source: digits, ...}` -> a `DatasetBundle`."""
    if not isinstance(data, dict) or "name" not in data:
        raise PamcError("data must be a mapping with a 'name' (e.g. {name: scenes, source: digits})")
    params = dict(data)
    name = params.pop("name")
    loader = LOADERS.get(name)
    check_keywords(loader, params, f"dataset {name!r}", "setting")
    return loader(**params)


from . import scenes  # noqa: E402,F401  (registers "scenes")
from . import prepared  # noqa: E402,F401  (registers "prepared")
