"""Backbones by name, and the CAM classifier that BoostLU acts on.

Backbone families live in their own modules (`resnet`, `scene_cnn`, `timm_backbones`), each
registering its names in `BACKBONES` (timm's models as the family ``timm:NAME``, resolved lazily,
so `import pamc` never imports timm); `weights` reads and loads weight files for all of them, and
`layouts` converts foreign key layouts (EfficientNet-PyTorch) to timm's names.

Every backbone built by name carries `weights_info`, what it started from (`weights.weights_record`),
which checkpoints record in model.json.

`CamClassifier` = backbone feature map -> 1x1 conv with bias (the class activation map, CAM)
-> BoostLU (one of its forms, `pamc.activation`) -> global average pool -> logits.  With alpha = 1
it equals the usual GAP + linear head, because a linear map commutes with averaging.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
from torch import nn

from ..activation import Alpha, BoostLU
from ..errors import PamcError
from ..registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


def build_backbone(name: str, weights: Optional[str] = None) -> nn.Module:
    """The backbone registered as `name` (``resnet50``, ``scene-cnn``, ``timm:convnext_tiny``, ...),
    with `weights` (None, a file, or a named option of its family); its `weights_info` says which."""
    from .weights import weights_record

    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    backbone = BACKBONES.get(name)(weights=weights)
    if getattr(backbone, "weights_info", None) is None:
        backbone.weights_info = weights_record(weights)
    return backbone


class CamClassifier(nn.Module):
    """Backbone -> 1x1-conv CAM head -> BoostLU(alpha) -> global average pool -> logits.

    `alpha` is the training-time boost (one, or one per class); pass `alpha=` to `forward` to
    evaluate with another one (inference-only BoostLU = train with alpha 1, evaluate with alpha > 1).
    `activation` is the form of BoostLU: a name of `pamc.activation.FORMS` or a spec dict
    (``{"name": "boostlu-threshold", "tau": 0.5}``); None is the paper's ``boostlu``.
    """

    def __init__(self, backbone: nn.Module | str, num_classes: int, alpha: Alpha = 1.0,
                 weights: Optional[str] = None, activation=None):
        super().__init__()
        if isinstance(backbone, str):
            self.backbone_name = backbone
            backbone = build_backbone(backbone, weights)
        else:
            self.backbone_name = type(backbone).__name__
        if int(num_classes) < 1:
            raise PamcError(f"num_classes must be >= 1 (got {num_classes})")
        channels = getattr(backbone, "out_channels", None)
        if channels is None:
            raise PamcError("the backbone needs an `out_channels` attribute (its feature-map channels)")
        self.backbone = backbone
        self.head = nn.Conv2d(channels, int(num_classes), kernel_size=1, bias=True)
        self.num_classes = int(num_classes)
        self.activation = BoostLU(alpha, activation)

    @property
    def alpha(self) -> Alpha:
        """The training-time alpha (a float, or a tuple of one per class)."""
        return self.activation.alpha

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps (B, C, h, w), before BoostLU."""
        return self.head(self.backbone(x))

    def boost(self, cams: torch.Tensor, alpha: Optional[Alpha] = None) -> torch.Tensor:
        """The model's form of BoostLU on (..., C, h, w) maps, at `alpha` (default: the model's)."""
        return self.activation(cams, alpha)

    def logits_from_cams(self, cams: torch.Tensor, alpha: Optional[Alpha] = None) -> torch.Tensor:
        return self.boost(cams, alpha).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, alpha: Optional[Alpha] = None, return_cams: bool = False):
        """Logits; with `return_cams`, (logits, CAMs before BoostLU) from the same pass, so a training
        method that reads the maps goes through the (DDP-wrapped, compiled) module like any other."""
        maps = self.cams(x)
        logits = self.logits_from_cams(maps, alpha)
        return (logits, maps) if return_cams else logits


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Run with batch-norm statistics of the checkpoint (eval mode); restore the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


from . import resnet, scene_cnn, timm_backbones  # noqa: E402,F401  (registration)
