"""Post-hoc BoostLU: turn an ordinary GAP + linear classifier into a `CamClassifier`.

A linear layer commutes with averaging, so fc(GAP(F)) = GAP(conv1x1(F)) with the fc weights as
the 1x1 convolution: the converted model gives the same logits at alpha = 1 and can then be
evaluated with BoostLU before the pooling (inference-only boosting of any trained classifier).

Supported heads (each conversion is verified numerically on a random probe input):
* `... -> avgpool (AdaptiveAvgPool2d(1)) -> fc (Linear)`: torchvision ResNet / ResNeXt /
  Wide-ResNet / RegNet;
* `features -> [avgpool] -> classifier` where the classifier is a Linear, optionally after
  Dropout / Flatten: torchvision DenseNet (its forward adds a ReLU after `features`),
  EfficientNet, MobileNetV2.
* timm models whose head is global average pooling (`SelectAdaptivePool2d`, pool type avg) then
  one Linear (`fc` / `classifier`; timm ResNets, EfficientNets, RegNets, ...): the backbone is
  the model's `forward_features`.
Heads with a hidden layer (MobileNetV3, VGG), normalisation after pooling (ConvNeXt) or no
spatial map (ViT: its logits come from the class token) are refused, with the reason: boosting
needs the logit to be a plain average of a map.  Such models can still be trained with BoostLU as
a `CamClassifier` (``--backbone timm:NAME``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .activation import Alpha, as_form, check_alpha
from .errors import PamcError
from .models import CamClassifier
from .models.weights import read_state_dict

PASS_THROUGH = (nn.Dropout, nn.Flatten, nn.Identity)


class FeatureBackbone(nn.Sequential):
    """The layers of a classifier before its global pooling; returns the last feature map."""

    def __init__(self, layers: list[nn.Module], out_channels: int):
        super().__init__(*layers)
        self.out_channels = out_channels


class TimmFeatures(nn.Module):
    """A timm classifier's `forward_features` (the map before its global pooling).

    It holds the whole timm model (its classifier too, unused here), so the weights stay shared."""

    def __init__(self, model: nn.Module, out_channels: int):
        super().__init__()
        self.model = model
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and callable(getattr(model, "forward_features", None))


def timm_name(model: nn.Module) -> str:
    return str((getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__)


def refuse_timm(model: nn.Module, why: str) -> PamcError:
    name = timm_name(model)
    return PamcError(f"timm {name} cannot be boosted post hoc: {why}; train it with BoostLU as a CamClassifier "
                     f"instead (--backbone timm:{name})")


def split_timm(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(forward_features as a backbone, the Linear) of a timm GAP + linear classifier; other heads
    are refused with the reason."""
    from timm.layers import SelectAdaptivePool2d

    if hasattr(model, "patch_embed") or getattr(model, "num_prefix_tokens", 0):
        raise refuse_timm(model, "it is a transformer whose logits come from its class token or pooled tokens, "
                                 "not from a global average of a spatial feature map")
    head = getattr(model, "head", None)
    pool = getattr(model, "global_pool", None)
    if not isinstance(pool, nn.Module) and isinstance(head, nn.Module):
        pool = getattr(head, "global_pool", None)  # ClassifierHead / NormMlpClassifierHead
    if isinstance(head, nn.Module) and not isinstance(getattr(head, "norm", nn.Identity()), nn.Identity):
        raise refuse_timm(model, f"its head normalises after the pooling ({type(head.norm).__name__} of the pooled "
                                 f"vector), which does not commute with averaging")
    if isinstance(head, nn.Module) and not isinstance(getattr(head, "pre_logits", nn.Identity()), nn.Identity):
        raise refuse_timm(model, "its head has a hidden layer between the pooling and the classifier")
    hidden = getattr(model, "head_hidden_size", None)
    if hidden and getattr(model, "num_features", hidden) != hidden:
        raise refuse_timm(model, f"its head has a hidden layer after the pooling ({model.num_features} -> {hidden} "
                                 f"channels, e.g. MobileNetV3's conv_head)")
    if not isinstance(pool, SelectAdaptivePool2d) or pool.pool_type not in ("avg", "fastavg"):
        kind = getattr(pool, "pool_type", type(pool).__name__)
        raise refuse_timm(model, f"its global pooling is {kind!r}, not an average")
    fc = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    fc = linear_head(fc) if isinstance(fc, nn.Module) else None
    if fc is None:
        raise refuse_timm(model, "its classifier is not one linear layer")
    return TimmFeatures(model, fc.in_features), fc


def linear_head(module: nn.Module) -> Optional[nn.Linear]:
    """The Linear of a head that is a Linear, or Dropout/Flatten/Identity layers then a Linear."""
    if isinstance(module, nn.Linear):
        return module
    if (isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Linear)
            and all(isinstance(m, PASS_THROUGH) for m in list(module)[:-1])):
        return module[-1]
    return None


def is_global_average_pool(module: nn.Module) -> bool:
    size = getattr(module, "output_size", None)
    return isinstance(module, nn.AdaptiveAvgPool2d) and size in (1, (1, 1), [1, 1])


def split_classifier(model: nn.Module) -> tuple[list[nn.Module], nn.Linear]:
    """(layers before the global pooling, the final Linear) of a supported classifier."""
    parts = dict(model.named_children())
    kind = type(model).__name__
    unsupported = (f"{kind} cannot be boosted post hoc: its head is not global average pooling + one linear "
                   f"layer (supported: ResNet/RegNet `avgpool` + `fc`, DenseNet/EfficientNet/MobileNetV2 "
                   f"`features` + linear `classifier`)")
    if "avgpool" in parts and "fc" in parts:
        fc = linear_head(parts["fc"])
        if fc is None or not is_global_average_pool(parts["avgpool"]):
            raise PamcError(unsupported)
        names = list(parts)
        return [parts[n] for n in names[:names.index("avgpool")]], fc
    if "features" in parts and "classifier" in parts:
        fc = linear_head(parts["classifier"])
        if fc is None or ("avgpool" in parts and not is_global_average_pool(parts["avgpool"])):
            raise PamcError(unsupported)
        from torchvision.models import DenseNet

        relu = [nn.ReLU()] if isinstance(model, DenseNet) else []  # DenseNet.forward applies it
        return [parts["features"], *relu], fc
    raise PamcError(unsupported)


def training_flags(model: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in model.modules()}


@torch.no_grad()
def check_equivalent(model: nn.Module, converted: CamClassifier, probe_size: int, fix: str = "") -> None:
    """The converted model must reproduce the original's logits (eval mode, alpha = 1)."""
    flags = training_flags(model) | training_flags(converted)
    param = next(converted.head.parameters())
    x = torch.randn(2, 3, probe_size, probe_size, generator=torch.Generator().manual_seed(0)).to(param)
    model.eval()
    converted.eval()
    try:
        want, got = model(x), converted(x, alpha=1.0)
    except Exception as exc:
        raise PamcError(f"{type(model).__name__} cannot be boosted post hoc: the layers before its pooling do not run "
                        f"as a chain ({exc.__class__.__name__}: {str(exc)[:120]}){fix}") from None
    finally:
        for m, flag in flags.items():
            m.training = flag
    scale = max(1.0, float(want.abs().max())) if torch.is_tensor(want) and want.numel() else 1.0
    if not torch.is_tensor(want) or want.shape != got.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4 * scale):
        raise PamcError(f"{type(model).__name__} cannot be boosted post hoc: its forward pass does more than "
                        f"features -> global average pool -> linear (the converted logits differ){fix}")


def boost(model: nn.Module, alpha: Alpha, probe_size: int = 64, activation=None) -> CamClassifier:
    """A `CamClassifier` computing `model`'s logits with BoostLU(alpha) before the pooling
    (`activation`: the form of BoostLU, a name, ``NAME:KEY=VALUE`` text or spec dict; None = boostlu).

    It shares the backbone modules (and so the weights) with `model`; the fc weights are copied
    into the 1x1-conv CAM head.  torchvision and timm classifiers are supported (module docstring).  The conversion is checked on a random probe_size^2 input.
    """
    fix = ""
    if is_timm_model(model):
        backbone, fc = split_timm(model)
        name = f"timm:{timm_name(model)}"
        fix = f"; train it with BoostLU as a CamClassifier instead (--backbone {name})"
    else:
        layers, fc = split_classifier(model)
        backbone, name = FeatureBackbone(layers, fc.in_features), type(model).__name__
    converted = CamClassifier(backbone, fc.out_features, alpha=alpha, activation=activation)
    converted.backbone_name = name
    head = converted.head.to(device=fc.weight.device, dtype=fc.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(fc.weight[:, :, None, None])
        head.bias.copy_(fc.bias if fc.bias is not None else torch.zeros_like(head.bias))
    check_equivalent(model, converted, probe_size, fix)
    for module in (converted, converted.backbone, converted.head):  # the shared layers keep their own modes
        module.training = model.training
    return converted


def boost_torchvision_file(arch: str, weights_file: str | Path, alpha: Alpha, num_classes: Optional[int] = None,
                           probe_size: int = 64, activation=None) -> CamClassifier:
    """Build torchvision's `arch`, load a local weights file (.pth/.pt via weights-only torch.load,
    or .safetensors) and boost it; the class count comes from the file unless given."""
    import torchvision

    check_alpha(alpha)  # before the slow part
    as_form(activation)
    valid = torchvision.models.list_models(module=torchvision.models)
    if arch not in valid:
        raise PamcError(f"unknown torchvision classifier {arch!r}; valid: {', '.join(valid)}")
    state = read_state_dict(weights_file)
    extra = {} if num_classes is None else {"num_classes": int(num_classes)}
    model = torchvision.models.get_model(arch, weights=None, **extra)
    _, fc = split_classifier(model)
    fc_key = next(name for name, m in model.named_modules() if m is fc) + ".weight"
    if num_classes is None and fc_key in state and state[fc_key].shape[0] != fc.out_features:
        model = torchvision.models.get_model(arch, weights=None, num_classes=int(state[fc_key].shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise PamcError(f"weights file {weights_file} does not fit torchvision {arch}: {str(exc).splitlines()[0][:200]}"
                        ) from None
    return boost(model.eval(), alpha, probe_size, activation).eval()


def torchvision_checkpoint(spec: str, alpha: Alpha, activation=None):
    """`ARCH=WEIGHTS_FILE` (as `pamc eval --torchvision` takes it) as a boosted model and the
    checkpoint metadata evaluation reads, so a converted classifier evaluates like a pamc run."""
    from .checkpoint import CheckpointMeta

    arch, _, weights = spec.partition("=")
    if not arch or not weights:
        raise PamcError(f"--torchvision expects ARCH=WEIGHTS_FILE (got {spec!r})")
    model = boost_torchvision_file(arch, weights, alpha, activation=activation)
    return model, CheckpointMeta(backbone=arch, num_classes=model.num_classes, alpha=alpha,
                                 activation=model.activation.form.spec())
