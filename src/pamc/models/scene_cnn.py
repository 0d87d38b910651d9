"""Small CNNs for CPU work on the embedded scenes."""
from __future__ import annotations

from typing import Optional

from torch import nn

from . import BACKBONES
from .weights import load_file_into


class SceneCNN(nn.Sequential):
    """3 stride-2 stages, so 64 px -> 8 x 8 CAM.

    `norm="group"` (registered as scene-cnn-gn) normalises per image, so a run on N processes
    computes exactly what one process computes (BatchNorm statistics are per process on CPU,
    where SyncBatchNorm is unavailable).
    """

    def __init__(self, width: int = 16, norm: str = "batch", weights: Optional[str] = None):
        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            layer = nn.BatchNorm2d(cout) if norm == "batch" else nn.GroupNorm(8, cout)
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), layer, nn.ReLU(inplace=True)]

        w = width
        super().__init__(
            *block(3, w, 2), *block(w, 2 * w, 1), *block(2 * w, 2 * w, 2),
            *block(2 * w, 4 * w, 1), *block(4 * w, 4 * w, 2), *block(4 * w, 4 * w, 1),
        )
        self.out_channels = 4 * w
        if weights:
            load_file_into(self, weights, "this scene CNN")


BACKBONES.register("scene-cnn")(lambda weights=None: SceneCNN(weights=weights))
BACKBONES.register("scene-cnn-wide")(lambda weights=None: SceneCNN(width=32, weights=weights))
BACKBONES.register("scene-cnn-gn")(lambda weights=None: SceneCNN(norm="group", weights=weights))
