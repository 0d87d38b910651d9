"""Backbones by name, and the CAM classifier that BoostLU acts on.

`CamClassifier` = backbone feature map -> 1x1 conv with bias (the class activation map, CAM)
-> BoostLU -> global average pool -> logits.  With alpha = 1 it equals the usual
GAP + linear head, because a linear map commutes with averaging.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .boostlu import boostlu, check_alpha
from .errors import PamcError
from .registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from a .safetensors or a torch file, safely (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise PamcError(f"weights file {path} not found; pass an existing .safetensors/.pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise PamcError(f"cannot read weights file {path}: {exc.__class__.__name__}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PamcError(f"weights file {path} does not hold a state dict")
    return state


class TorchvisionResNet(nn.Sequential):
    """A torchvision ResNet without its average pool and fc layer: returns the last feature map."""

    def __init__(self, name: str, weights: Optional[str] = None):
        import torchvision

        factory = getattr(torchvision.models, name)
        net = factory(weights=None)
        if weights in ("imagenet", "IMAGENET1K_V1", "DEFAULT"):
            enum = torchvision.models.get_model_weights(name)
            tag = "IMAGENET1K_V1" if weights == "imagenet" else weights
            try:
                state = getattr(enum, tag).get_state_dict(progress=False)
            except Exception as exc:
                raise PamcError(
                    f"cannot download torchvision's {name} ImageNet weights ({exc.__class__.__name__}); "
                    f"download them elsewhere and pass the file with --backbone-weights PATH"
                ) from None
            net.load_state_dict(state)
        elif weights:
            state = load_state_dict_file(weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise PamcError(
                    f"weights file {weights} does not fit {name}: "
                    f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
                )
        super().__init__(*list(net.children())[:-2])
        self.out_channels = net.fc.in_features


for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    BACKBONES.register(_name)(lambda weights=None, _n=_name: TorchvisionResNet(_n, weights))


class SceneCNN(nn.Sequential):
    """A small CNN for CPU work on the embedded scenes: 3 stride-2 stages, so 64 px -> 8 x 8 CAM.

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
            state = load_state_dict_file(weights)
            try:
                self.load_state_dict(state)
            except RuntimeError as exc:
                raise PamcError(f"weights file {weights} does not fit this scene CNN: {str(exc).splitlines()[0]}") from None


BACKBONES.register("scene-cnn")(lambda weights=None: SceneCNN(weights=weights))
BACKBONES.register("scene-cnn-wide")(lambda weights=None: SceneCNN(width=32, weights=weights))
BACKBONES.register("scene-cnn-gn")(lambda weights=None: SceneCNN(norm="group", weights=weights))


def build_backbone(name: str, weights: Optional[str] = None) -> nn.Module:
    return BACKBONES.get(name)(weights=weights)


class CamClassifier(nn.Module):
    """Backbone -> 1x1-conv CAM head -> BoostLU(alpha) -> global average pool -> logits.

    `alpha` is the training-time boost; pass `alpha=` to `forward` to evaluate with another one
    (inference-only BoostLU = train with alpha 1, evaluate with alpha > 1).
    """

    def __init__(self, backbone: nn.Module | str, num_classes: int, alpha: float = 1.0,
                 weights: Optional[str] = None):
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
        self.alpha = check_alpha(alpha)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps (B, C, h, w), before BoostLU."""
        return self.head(self.backbone(x))

    def logits_from_cams(self, cams: torch.Tensor, alpha: Optional[float] = None) -> torch.Tensor:
        return boostlu(cams, self.alpha if alpha is None else alpha).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, alpha: Optional[float] = None) -> torch.Tensor:
        return self.logits_from_cams(self.cams(x), alpha)


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Run with batch-norm statistics of the checkpoint (eval mode); restore the mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
