"""Turn index batches into uint8 image batches: directly for in-memory arrays, through a
DataLoader (worker processes, pinned memory) for images decoded from files."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset


def image_batches(dataset: Dataset, batches: Sequence[torch.Tensor], num_workers: int = 0,
                  pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """Yields one uint8 B x 3 x H x W tensor per index batch, in order."""
    take = getattr(dataset, "take", None)
    if take is not None:
        for index in batches:
            yield take(index)
        return
    loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
                        pin_memory=pin_memory, persistent_workers=False)
    yield from loader
