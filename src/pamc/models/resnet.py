"""torchvision ResNets as CAM backbones: the paper's ResNet-50 and its siblings."""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..errors import PamcError
from . import BACKBONES
from .weights import load_file_into

TORCHVISION_TAGS = {"imagenet": "IMAGENET1K_V1", "pretrained": "IMAGENET1K_V1", "IMAGENET1K_V1": "IMAGENET1K_V1",
                    "IMAGENET1K_V2": "IMAGENET1K_V2", "DEFAULT": "DEFAULT"}


class TorchvisionResNet(nn.Sequential):
    """A torchvision ResNet without its average pool and fc layer: returns the last feature map.

    `weights`: None (random), "imagenet" / "pretrained" (= torchvision's IMAGENET1K_V1, the
    reference's), IMAGENET1K_V2 / DEFAULT, or a local file in torchvision's layout (its fc is
    ignored).  `weights_info` records the torchvision tag (the weights version matters, spec 5).
    """

    def __init__(self, name: str, weights: Optional[str] = None):
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        if weights in TORCHVISION_TAGS:
            enum = torchvision.models.get_model_weights(name)
            try:
                state = getattr(enum, TORCHVISION_TAGS[weights]).get_state_dict(progress=False)
            except Exception as exc:
                raise PamcError(
                    f"cannot download torchvision's {name} ImageNet weights ({exc.__class__.__name__}); "
                    f"download them elsewhere and pass the file with --backbone-weights PATH"
                ) from None
            net.load_state_dict(state)
            info = {"name": weights, "tag": str(getattr(enum, TORCHVISION_TAGS[weights]))}
        elif weights:
            load_file_into(net, weights, name, ignore_prefixes=("fc.",))
        super().__init__(*list(net.children())[:-2])
        self.out_channels = net.fc.in_features
        if weights in TORCHVISION_TAGS:
            self.weights_info = info


for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    BACKBONES.register(_name)(lambda weights=None, _n=_name: TorchvisionResNet(_n, weights))
